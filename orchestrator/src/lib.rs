//! Cairn orchestrator: node-side pieces that turn pods into processes.

pub mod runtime;
