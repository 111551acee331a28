//! What a joining node reads: cluster-info, a kubeconfig, a JWS (kubeforge::fuzzing::discovery).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kubeforge::fuzzing::discovery(data));
