//! Cairn orchestrator: a Kubernetes-compatible control plane on the Cairn store, and the node-side
//! pieces that turn pods into processes.

pub mod agent;
pub mod api;
pub mod apiserver;
pub mod bootstrap;
pub mod client;
pub mod controllers;
pub mod dns;
pub mod election;
pub mod proxy;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod serve;
pub mod simulate;
