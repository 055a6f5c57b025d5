//! Cairn's fault-injection and correctness harness, in the manner of Jepsen and etcd's
//! robustness tests: a real cluster of `cairn` processes, peer links through proxies the harness
//! controls, nemeses that kill, pause, partition, slow down and power-cut members, concurrent
//! clients recording what they asked and what they were told, and checkers that decide whether
//! the history could have come from a correct store.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod lazyfs;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod runner;
pub mod security;
pub mod workload;
