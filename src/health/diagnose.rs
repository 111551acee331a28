//! Why a control-plane component is not coming up, from what its container did and wrote.

use serde::Serialize;

pub use crate::cri::Container;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    /// The cause is known; waiting longer would not change it.
    pub certain: bool,
    /// The probable cause in one sentence.
    pub cause: String,
}

/// Log signatures that explain an exit, most specific first: (needle, decisive, cause). A
/// decisive one ends the wait at the first exit; the others only name the cause of a crash loop
/// or a timeout (an API server may exit once while etcd is still starting).
const SIGNATURES: &[(&str, bool, &str)] = &[
    ("address already in use", true, "a port it must listen on is already in use by another process"),
    ("unknown flag", true, "an invalid command-line flag (check extraArgs and patches)"),
    ("unknown shorthand flag", true, "an invalid command-line flag (check extraArgs and patches)"),
    ("invalid argument", true, "an invalid command-line flag value (check extraArgs and patches)"),
    ("unrecognized feature gate", true, "an unknown feature gate in its flags"),
    ("x509:", true, "a certificate problem"),
    ("tls: ", true, "a TLS problem with its certificates"),
    ("no such file or directory", true, "a file it needs is missing on the node"),
    ("permission denied", true, "it cannot read a file or bind a port (permission denied)"),
    ("cannot be downgraded", true, "etcd's data was written by a newer etcd (it needs the data from before the upgrade)"),
    ("etcdserver: ", false, "etcd refuses its requests"),
    ("context deadline exceeded", false, "it cannot reach a server it depends on (etcd for the API server, the API server for the others)"),
    ("connection refused", false, "it cannot reach a server it depends on (etcd for the API server, the API server for the others)"),
];

/// The probable cause, given the container facts and the last lines of its log. `certain` is set
/// only for causes that waiting cannot fix: a missing image, or an exit explained by its log, or a
/// crash loop.
pub fn diagnose(container: &Container, log: &[String]) -> Option<Diagnosis> {
    let reason = container.reason.as_deref().unwrap_or_default();
    if container.image_missing
        || matches!(
            reason,
            "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName"
        )
    {
        return Some(Diagnosis {
            certain: true,
            cause: "its image is not on the node and cannot be pulled (check imageRepository, the version and imagePullPolicy)".into(),
        });
    }
    let explained = log.iter().rev().find_map(|line| {
        let lower = line.to_lowercase();
        SIGNATURES
            .iter()
            .find(|(needle, _, _)| lower.contains(needle))
            .map(|(_, decisive, cause)| (*decisive, format!("{cause}: {}", line.trim())))
    });
    let crash_loop =
        reason == "CrashLoopBackOff" || (container.has_exited() && container.restarts >= 2);
    if let Some((decisive, cause)) = &explained {
        if container.has_exited() && container.exit_code != Some(0) && (*decisive || crash_loop) {
            return Some(Diagnosis {
                certain: true,
                cause: cause.clone(),
            });
        }
    }
    if crash_loop {
        let code = container
            .exit_code
            .map_or(String::new(), |c| format!(" with code {c}"));
        return Some(Diagnosis {
            certain: true,
            cause: format!(
                "it keeps exiting{code} right after it starts (crash loop); its log says why"
            ),
        });
    }
    if let Some((_, cause)) = explained {
        return Some(Diagnosis {
            certain: false,
            cause,
        });
    }
    let cause = match container.state.as_str() {
        "not started" => {
            "the kubelet never started it: is the kubelet running, and reading this staticPodPath?"
        }
        "running" => "it runs but its health endpoint never answered 200",
        "pulling" => "its image is not on the node yet: the kubelet may still be pulling it",
        "created" | "waiting" => "its container was created but never ran",
        _ => return None,
    };
    Some(Diagnosis {
        certain: false,
        cause: cause.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, restarts: u32) -> Container {
        Container {
            state: "exited".into(),
            exit_code: Some(code),
            restarts,
            ..Default::default()
        }
    }

    #[test]
    fn an_exit_explained_by_its_log_is_certain_at_once() {
        let log = vec![
            "I1122 10:00:00 flags.go:64] FLAG: --v=\"2\"".to_string(),
            "Error: unknown flag: --no-such-flag".to_string(),
        ];
        let d = diagnose(&exited(1, 0), &log).unwrap();
        assert!(d.certain);
        assert!(d.cause.contains("invalid command-line flag"), "{}", d.cause);
        assert!(d.cause.contains("--no-such-flag"));
    }

    #[test]
    fn port_in_use_and_certificates_are_named() {
        let log = vec!["failed to listen on 127.0.0.1:10259: listen tcp 127.0.0.1:10259: bind: address already in use".to_string()];
        let d = diagnose(&exited(1, 0), &log).unwrap();
        assert!(d.certain && d.cause.contains("already in use"));
        let log = vec![
            "tls: failed to verify certificate: x509: certificate signed by unknown authority"
                .to_string(),
        ];
        let d = diagnose(&exited(1, 1), &log).unwrap();
        assert!(d.certain && d.cause.contains("certificate"));
    }

    #[test]
    fn a_running_container_with_a_worrying_line_is_not_yet_certain() {
        let running = Container {
            state: "running".into(),
            ..Default::default()
        };
        let log = vec![
            "W1122 dial tcp 127.0.0.1:2379: connect: connection refused; context deadline exceeded"
                .to_string(),
        ];
        let d = diagnose(&running, &log).unwrap();
        assert!(!d.certain);
    }

    #[test]
    fn crash_loops_and_missing_images_are_certain() {
        let d = diagnose(&exited(137, 3), &[]).unwrap();
        assert!(d.certain && d.cause.contains("code 137"));
        let waiting = Container {
            state: "waiting".into(),
            reason: Some("ErrImageNeverPull".into()),
            ..Default::default()
        };
        assert!(diagnose(&waiting, &[]).unwrap().cause.contains("image"));
        let first_exit = exited(1, 0);
        assert!(!diagnose(&first_exit, &[]).is_some_and(|d| d.certain));
    }

    #[test]
    fn a_clean_exit_with_an_error_line_is_not_called_certain() {
        let log = vec!["x509: something logged while shutting down".to_string()];
        assert!(!diagnose(&exited(0, 0), &log).unwrap().certain);
    }
}
