//! The agent's `/exec/{ns}/{pod}/{container}` (the kubelet's path and query: `command` repeated,
//! `input`, `output`, `error`, `tty`; the API's `stdin`, `stdout`, `stderr` are accepted too): a
//! WebSocket speaking Kubernetes' remotecommand channel protocol, `v5.channel.k8s.io` preferred
//! over `v4.channel.k8s.io`. Each binary frame starts with its channel: 0 stdin, 1 stdout,
//! 2 stderr, 3 the closing metav1 Status, 4 terminal resizes (`{"Width":..,"Height":..}`), and
//! in v5 255 closing a stream (the next byte names it). The command runs through the runtime's
//! streaming exec; the errors and Status wordings are the kubelet's (with containerd), which
//! kubectl shows as they are. It never imports `registry` or `apiserver`.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::server::Ctx;
use crate::runtime::{ExecReader, ExecSession, ExecStreams, RuntimeError};

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// After the command exits, its output is still forwarded until it ends (EOF) or, when a
/// process it left behind keeps the stream open, until nothing has come for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// What was asked for, from the query.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ExecRequest {
    pub command: Vec<String>,
    pub streams: ExecStreams,
}

impl ExecRequest {
    pub fn parse(query: &str) -> ExecRequest {
        let mut r = ExecRequest::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let on = v == "1" || v == "true";
            match k.as_ref() {
                "command" => r.command.push(v.into_owned()),
                "input" | "stdin" => r.streams.stdin |= on,
                "output" | "stdout" => r.streams.stdout |= on,
                "error" | "stderr" => r.streams.stderr |= on,
                "tty" => r.streams.tty |= on,
                _ => {}
            }
        }
        // A terminal carries both outputs; the kubelet drops stderr rather than refuse.
        if r.streams.tty {
            r.streams.stderr = false;
        }
        r
    }
}

fn text(code: StatusCode, message: impl Into<String>) -> Response {
    let mut m = message.into();
    m.push('\n');
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        m,
    )
        .into_response()
}

pub(super) async fn exec(
    State(ctx): State<Ctx>,
    Path((ns, name, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let req = ExecRequest::parse(query.as_deref().unwrap_or(""));
    if !req.streams.stdin && !req.streams.stdout && !req.streams.stderr {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 of stdin, stdout, stderr",
        );
    }
    let Some(pod) = ctx.pods.state().into_iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(ns.as_str())
            && p.metadata.name.as_deref() == Some(name.as_str())
    }) else {
        return text(StatusCode::NOT_FOUND, "pod does not exist");
    };
    let uid = super::convert::runtime_name(&pod);
    let running = ctx
        .rt
        .container_status(&uid, &container)
        .is_ok_and(|s| s.state == crate::runtime::ContainerState::Running);
    if !running {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({container:?})"),
        );
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let spdy = headers
                .get(header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy"));
            if spdy {
                // As a Status: clients read a plain-text answer with a colon in it as YAML.
                let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "BadRequest", "code": 400,
                "message": format!(
                    "SPDY/3.1 streams are not served by this node; exec needs a WebSocket \
                     client ({V5} or {V4}), as kubectl 1.30 and later are (1.29 with \
                     KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true)"
                )});
                return (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "application/json")],
                    status.to_string(),
                )
                    .into_response();
            }
            return rejection.into_response();
        }
    };
    let ws = ws.protocols([V5, V4]);
    let v5 = ws
        .selected_protocol()
        .is_some_and(|p| p.as_bytes() == V5.as_bytes());
    tracing::info!(namespace = %ns, pod = %name, %container, command = ?req.command, tty = req.streams.tty, "exec");
    let rt = ctx.rt.clone();
    ws.on_upgrade(move |socket| async move {
        let started = rt
            .exec_stream(&uid, &container, &req.command, req.streams)
            .await;
        serve(socket, v5, &req.command, started).await;
    })
}

/// The kubelet's closing Status for an exit code.
pub(super) fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// The kubelet's Status for a command that could not be run at all.
fn internal_error(message: String) -> Value {
    let inner =
        format!("error executing command in container: failed to exec in container: {message}");
    json!({"metadata": {}, "status": "Failure",
        "message": format!("Internal error occurred: {inner}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": inner}]},
        "code": 500})
}

/// Clients read a close without a code (1005) as an error, even after the Status.
fn normal_close() -> Message {
    Message::Close(Some(axum::extract::ws::CloseFrame {
        code: axum::extract::ws::close_code::NORMAL,
        reason: "".into(),
    }))
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut b = Vec::with_capacity(data.len() + 1);
    b.push(channel);
    b.extend_from_slice(data);
    Message::Binary(Bytes::from(b))
}

fn pump(mut from: ExecReader, channel: u8, to: mpsc::Sender<Message>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.send(frame(channel, &buf[..n])).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
}

async fn serve(
    socket: WebSocket,
    v5: bool,
    command: &[String],
    started: Result<ExecSession, RuntimeError>,
) {
    let (mut sink, mut incoming) = socket.split();
    let session = match started {
        Ok(s) => s,
        Err(e) => {
            let message = match e {
                RuntimeError::Start { message, .. } => message,
                other => other.to_string(),
            };
            let status = internal_error(message);
            let _ = sink
                .send(frame(STATUS, status.to_string().as_bytes()))
                .await;
            let _ = sink.send(normal_close()).await;
            return;
        }
    };
    let ExecSession {
        mut stdin,
        stdout,
        stderr,
        terminal,
        exit,
    } = session;
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    for (reader, channel) in [(stdout, STDOUT), (stderr, STDERR)] {
        if let Some(r) = reader {
            pump(r, channel, out_tx.clone());
        }
    }
    drop(out_tx);

    // The client's frames: stdin bytes, resizes, and (v5) stdin's close. The stream ends only
    // when the client goes away.
    let input = async move {
        while let Some(Ok(msg)) = incoming.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::from(t.as_str().to_owned()),
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, rest)) = data.split_first() else {
                continue;
            };
            match channel {
                STDIN => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(rest).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    let size: Value = serde_json::from_slice(rest).unwrap_or_default();
                    let dim = |k: &str| size[k].as_u64().and_then(|v| u16::try_from(v).ok());
                    if let (Some(t), Some(w), Some(h)) = (&terminal, dim("Width"), dim("Height")) {
                        if let Err(e) = t.resize(w, h) {
                            tracing::debug!(error = %e, "terminal resize failed");
                        }
                    }
                }
                CLOSE if v5 && rest.first() == Some(&STDIN) => stdin = None,
                _ => {}
            }
        }
    };
    tokio::pin!(input);
    let exited = exit.wait();
    tokio::pin!(exited);
    let mut code: Option<i32> = None;
    let mut outputs_open = true;
    let idle = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(idle);
    loop {
        tokio::select! {
            m = out_rx.recv(), if outputs_open => match m {
                Some(m) => {
                    if sink.send(m).await.is_err() {
                        return;
                    }
                    if code.is_some() {
                        idle.as_mut().reset(tokio::time::Instant::now() + DRAIN_IDLE);
                    }
                }
                None => {
                    outputs_open = false;
                    if code.is_some() {
                        break;
                    }
                }
            },
            r = &mut exited, if code.is_none() => {
                code = Some(r.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "exec wait failed");
                    128
                }));
                if !outputs_open {
                    break;
                }
                idle.as_mut().reset(tokio::time::Instant::now() + DRAIN_IDLE);
            },
            _ = &mut idle, if code.is_some() => break,
            // The client went away: dropping the exit kills the command.
            _ = &mut input => return,
        }
    }
    let status = exit_status(command, code.unwrap_or(128));
    let _ = sink
        .send(frame(STATUS, status.to_string().as_bytes()))
        .await;
    let _ = sink.send(normal_close()).await;
    // Let the close handshake finish before the connection drops.
    let _ = tokio::time::timeout(Duration::from_secs(1), &mut input).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_the_kubelets_and_the_apis_query_names_are_understood() {
        let k =
            ExecRequest::parse("command=sh&command=-c&command=echo+hi&input=1&output=1&error=1");
        assert_eq!(k.command, ["sh", "-c", "echo hi"]);
        assert!(k.streams.stdin && k.streams.stdout && k.streams.stderr && !k.streams.tty);
        let a = ExecRequest::parse("command=ls&stdin=true&stdout=true&stderr=true&tty=true");
        assert!(a.streams.stdin && a.streams.stdout && a.streams.tty);
        assert!(!a.streams.stderr, "a terminal carries stderr on stdout");
        let none = ExecRequest::parse("command=ls&stdin=false");
        assert_eq!(none.streams, ExecStreams::default());
    }

    #[test]
    fn exit_codes_read_as_the_kubelets_status() {
        let cmd = ["sh".to_string(), "-c".to_string(), "exit 3".to_string()];
        assert_eq!(
            exit_status(&cmd, 0),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = exit_status(&cmd, 3);
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "3"})
        );
    }
}
