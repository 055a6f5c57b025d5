//! NodeResourcesFit (filter) and the LeastAllocated and BalancedAllocation scores: a pod fits where
//! its requests plus those of the node's pods stay within the node's allocatable cpu, memory and pod
//! count; among fitting nodes, emptier and more evenly used ones score higher.

use k8s_openapi::api::core::v1::{Node, Pod};

use super::{NodeInfo, Plugin, PodInfo};
use crate::api::quantity;

/// Requested or allocatable amounts: cpu in millicores, memory in thousandths of a byte.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Resources {
    pub cpu: i128,
    pub memory: i128,
    pub pods: i128,
}

fn q(v: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> i128 {
    v.and_then(|q| quantity::parse(&q.0).ok()).unwrap_or(0)
}

impl Resources {
    /// A pod's requests: the sum over its containers, or its largest init container if larger.
    pub fn of_pod(pod: &Pod) -> Resources {
        let Some(spec) = pod.spec.as_ref() else {
            return Resources {
                pods: 1,
                ..Default::default()
            };
        };
        let req = |c: &k8s_openapi::api::core::v1::Container, name: &str| {
            q(c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|m| m.get(name)))
        };
        let mut r = Resources {
            pods: 1,
            ..Default::default()
        };
        for c in &spec.containers {
            r.cpu += req(c, "cpu");
            r.memory += req(c, "memory");
        }
        for c in spec.init_containers.iter().flatten() {
            r.cpu = r.cpu.max(req(c, "cpu"));
            r.memory = r.memory.max(req(c, "memory"));
        }
        r
    }

    pub fn allocatable(node: &Node) -> Resources {
        let a = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        Resources {
            cpu: q(a.and_then(|a| a.get("cpu"))),
            memory: q(a.and_then(|a| a.get("memory"))),
            pods: q(a.and_then(|a| a.get("pods"))) / 1000,
        }
    }

    pub fn add(&mut self, o: &Resources) {
        self.cpu += o.cpu;
        self.memory += o.memory;
        self.pods += o.pods;
    }

    pub fn sub(&mut self, o: &Resources) {
        self.cpu -= o.cpu;
        self.memory -= o.memory;
        self.pods -= o.pods;
    }
}

pub struct Fit;

impl Plugin for Fit {
    fn filter(&self, info: &PodInfo, node: &NodeInfo) -> Result<(), String> {
        let want = info.requests;
        let (used, cap) = (node.requested, node.allocatable);
        if used.pods + 1 > cap.pods {
            return Err("Too many pods".into());
        }
        if want.cpu > 0 && used.cpu + want.cpu > cap.cpu {
            return Err("Insufficient cpu".into());
        }
        if want.memory > 0 && used.memory + want.memory > cap.memory {
            return Err("Insufficient memory".into());
        }
        Ok(())
    }
}

/// Requests as the scores count them: pods without requests count as 100m cpu and 200Mi memory, as
/// kube-scheduler assumes, so they still spread.
pub fn scored(r: Resources) -> Resources {
    Resources {
        cpu: if r.cpu == 0 { 100 } else { r.cpu },
        memory: if r.memory == 0 {
            200 * 1024 * 1024 * 1000
        } else {
            r.memory
        },
        pods: r.pods,
    }
}

fn fractions(info: &PodInfo, node: &NodeInfo) -> (f64, f64) {
    let want = scored(info.requests);
    let used = node.scored;
    let frac = |u: i128, w: i128, cap: i128| {
        if cap <= 0 {
            1.0
        } else {
            ((u + w) as f64 / cap as f64).min(1.0)
        }
    };
    (
        frac(used.cpu, want.cpu, node.allocatable.cpu),
        frac(used.memory, want.memory, node.allocatable.memory),
    )
}

pub struct LeastAllocated;

impl Plugin for LeastAllocated {
    fn score(&self, info: &PodInfo, node: &NodeInfo) -> Option<i64> {
        let (c, m) = fractions(info, node);
        Some((((1.0 - c) + (1.0 - m)) / 2.0 * 100.0) as i64)
    }
}

pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn score(&self, info: &PodInfo, node: &NodeInfo) -> Option<i64> {
        let (c, m) = fractions(info, node);
        Some(((1.0 - (c - m).abs()) * 100.0) as i64)
    }
}
