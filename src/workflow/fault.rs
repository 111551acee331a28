//! Test-only crash injection: `KUBEFORGE_FAULT=after:<phase>` kills the process right after that
//! phase, the way a power cut or OOM kill would, so tests can prove re-runs converge.

pub fn after_phase(phase: &str) {
    if let Ok(spec) = std::env::var("KUBEFORGE_FAULT") {
        if spec.strip_prefix("after:") == Some(phase) {
            eprintln!("KUBEFORGE_FAULT: killing the process after phase {phase}");
            std::process::abort();
        }
    }
}

/// `KUBEFORGE_FAULT=after-swap:<component>`: killed right after an upgrade swapped that
/// component's manifest, before waiting for it (an upgrade interrupted between components).
pub fn after_swap(component: &str) {
    if let Ok(spec) = std::env::var("KUBEFORGE_FAULT") {
        if spec.strip_prefix("after-swap:") == Some(component) {
            eprintln!("KUBEFORGE_FAULT: killing the process after swapping {component}");
            std::process::abort();
        }
    }
}
