//! The orchestrator's tests against real parts, one module per area, all in one test binary: a
//! binary per area took longer to build than its tests take to run. Shared helpers live in
//! `common` (runtime and agent fixtures, `up` as a process), `kube_api` (an API server over a
//! store) and `netlab` (network namespaces for the service proxy). The areas' tests run side by
//! side in one process, so whatever a test creates on the machine (cgroups, namespaces, state
//! directories, node names) carries a tag of its own besides the process id.

mod common;
mod kube_api;
mod netlab;

mod agent;
mod apiserver_http;
mod apiserver_kubectl;
mod apiserver_objects;
mod apiserver_rbac;
mod apiserver_store;
mod cli;
mod controllers;
mod decoders;
mod dns;
mod examples;
mod images;
mod join;
mod network;
mod proxy;
mod runtime;
mod scheduler;
mod serviceaccounts;
mod up;
