//! What the cluster hands the agent: cgroup paths (any process that may create a
//! cgroup names them) and API objects (pods, EndpointSlices) as JSON. Parsing and
//! indexing must never panic, whatever the bytes.
#![no_main]

use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use libfuzzer_sys::fuzz_target;
use mtls_auditor::kube::{ClusterState, cgroup_path};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut state = ClusterState::new("node");
    match mode % 3 {
        0 => {
            let _ = cgroup_path::parse(text);
            let _ = state.workload_of_cgroup(text);
        }
        1 => {
            if let Ok(pod) = serde_json::from_str::<Pod>(text) {
                state.apply_pod(&pod);
                state.replace_pods(std::slice::from_ref(&pod));
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                let path = format!("/kubepods/pod{uid}/{}", "0".repeat(64));
                let _ = state.workload_of_cgroup(&path);
                state.delete_pod(&pod);
            }
        }
        _ => {
            if let Ok(slice) = serde_json::from_str::<EndpointSlice>(text) {
                state.apply_slice(&slice);
                let _ = state.services_for("10.0.0.1".parse().expect("ip"), 80);
                state.delete_slice(&slice);
            }
        }
    }
});
