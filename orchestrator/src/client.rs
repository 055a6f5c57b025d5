//! How the control-plane components talk to the API server: a kube client from a kubeconfig,
//! throttled by a token bucket as client-go's clients are (`--kube-api-qps`, `--kube-api-burst`), so
//! that a controller catching up on thousands of objects paces its calls instead of flooding the
//! API server. It never imports `registry` or `apiserver`.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("read {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {source}")]
    Config {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("client: {0}")]
    Client(#[from] kube::Error),
}

/// Requests per second and the burst allowed above that rate. A rate of zero or less means no
/// limit.
#[derive(Debug, Clone, Copy)]
pub struct Throttle {
    pub qps: f64,
    pub burst: u32,
}

/// A client for the cluster `kubeconfig` names, with its own token bucket.
pub async fn from_kubeconfig(
    kubeconfig: &Path,
    throttle: Throttle,
) -> Result<kube::Client, ClientError> {
    Clients::from_kubeconfig(kubeconfig, throttle)
        .await?
        .client()
}

/// Where a component's parts get their clients. kube-controller-manager gives each controller a
/// client of its own, so one controller's burst of writes does not hold back the others'.
#[derive(Clone)]
pub enum Clients {
    /// A new client for each part, each with a token bucket of its own.
    Each {
        config: Box<kube::Config>,
        throttle: Throttle,
    },
    /// One client (and one token bucket) for all parts.
    Shared(kube::Client),
}

impl From<kube::Client> for Clients {
    fn from(c: kube::Client) -> Clients {
        Clients::Shared(c)
    }
}

impl Clients {
    pub async fn from_kubeconfig(
        kubeconfig: &Path,
        throttle: Throttle,
    ) -> Result<Clients, ClientError> {
        let path = kubeconfig.display().to_string();
        let kc = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|source| {
            ClientError::Kubeconfig {
                path: path.clone(),
                source,
            }
        })?;
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .map_err(|source| ClientError::Config { path, source })?;
        Ok(Clients::Each {
            config: Box::new(config),
            throttle,
        })
    }

    pub fn client(&self) -> Result<kube::Client, ClientError> {
        match self {
            Clients::Each { config, throttle } => {
                let builder = kube::client::ClientBuilder::try_from((**config).clone())?;
                Ok(builder.with_layer(&TokenBucketLayer(*throttle)).build())
            }
            Clients::Shared(c) => Ok(c.clone()),
        }
    }
}

struct TokenBucketLayer(Throttle);

impl<S> Layer<S> for TokenBucketLayer {
    type Service = TokenBucket<S>;

    fn layer(&self, inner: S) -> TokenBucket<S> {
        TokenBucket {
            inner,
            throttle: self.0,
            tokens: f64::from(self.0.burst.max(1)),
            refilled: Instant::now(),
            wait: None,
        }
    }
}

/// Holds a request back until a token is there: tokens accrue at `qps` up to `burst`.
pub struct TokenBucket<S> {
    inner: S,
    throttle: Throttle,
    tokens: f64,
    refilled: Instant,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S, R> Service<R> for TokenBucket<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Throttle { qps, burst } = self.throttle;
        if qps > 0.0 {
            loop {
                let now = Instant::now();
                let earned = now.duration_since(self.refilled).as_secs_f64() * qps;
                self.tokens = (self.tokens + earned).min(f64::from(burst.max(1)));
                self.refilled = now;
                if self.tokens >= 1.0 {
                    self.wait = None;
                    break;
                }
                let until = now + Duration::from_secs_f64((1.0 - self.tokens) / qps);
                let sleep = self
                    .wait
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                sleep.as_mut().reset(until);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        if self.throttle.qps > 0.0 {
            self.tokens -= 1.0;
        }
        self.inner.call(req)
    }
}

/// A reflector cache of `api`'s objects kept by a watch in its own task, which also wakes
/// `notify` (if any) on every change it applies.
pub fn reflect<K>(
    api: kube::Api<K>,
    notify: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> (
    kube::runtime::reflector::Store<K>,
    tokio::task::JoinHandle<()>,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, watch) = reflector(api, notify);
    (store, tokio::spawn(watch))
}

/// The cache of [`reflect`] and the watch that keeps it, for the caller to run where its tasks
/// live.
pub fn reflector<K>(
    api: kube::Api<K>,
    notify: Option<std::sync::Arc<tokio::sync::Notify>>,
) -> (
    kube::runtime::reflector::Store<K>,
    impl Future<Output = ()> + Send + 'static,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (store, writer) = reflector::store();
    let watch = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(move |ev| {
            if let (Ok(_), Some(n)) = (ev, &notify) {
                n.notify_one();
            }
            futures::future::ready(())
        });
    (store, watch)
}

/// A kubeconfig for `server` trusting `ca_pem` and authenticating with `token`.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: cairn\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: cairn\n  context:\n    cluster: cairn\n    user: {user}\n    namespace: default\ncurrent-context: cairn\npreferences: {{}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    #[derive(Clone)]
    struct Echo;

    impl Service<u32> for Echo {
        type Response = u32;
        type Error = Infallible;
        type Future = std::future::Ready<Result<u32, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: u32) -> Self::Future {
            std::future::ready(Ok(req))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_requests_are_paced_at_the_rate() {
        use tower::ServiceExt;
        let mut svc = TokenBucketLayer(Throttle {
            qps: 10.0,
            burst: 5,
        })
        .layer(Echo);
        let start = Instant::now();
        for i in 0..5 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        for i in 0..10 {
            svc.ready().await.unwrap().call(i).await.unwrap();
        }
        // Ten more at ten a second take a second (the clock is paused, so this is exact).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(999) && took <= Duration::from_millis(1001),
            "{took:?}"
        );
    }
}
