//! `cairn-client` and `cairnctl` against real members (and etcd where installed), one module per
//! area, built as one test binary. `common` starts the members.

mod common;

mod auth;
mod cairnctl;
mod concurrency;
mod kv;
mod lease;
mod maintenance;
mod tls;
mod watch;
