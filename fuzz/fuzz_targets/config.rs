//! A config file's bytes through the loaders of init, join and upgrade (kubeforge::fuzzing::config).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kubeforge::fuzzing::config(data));
