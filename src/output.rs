//! What a person (or a program) sees on stdout: kubeadm-style `[phase] message` lines, or with
//! `-o json` one JSON object per line carrying the same message plus structured fields.

use serde_json::{json, Value};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub format: Format,
}

impl Output {
    pub fn json(&self) -> bool {
        self.format == Format::Json
    }

    /// `[phase] message`; in JSON `{"phase":…,"message":…, <fields>}`.
    pub fn step(&self, phase: &str, message: &str, fields: Value) {
        match self.format {
            Format::Text => println!("[{phase}] {message}"),
            Format::Json => {
                let mut obj = json!({ "phase": phase, "message": message });
                if let (Some(map), Value::Object(extra)) = (obj.as_object_mut(), fields) {
                    map.extend(extra);
                }
                self.print_json(&obj);
            }
        }
    }

    pub fn print_json(&self, value: &Value) {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, value);
        let _ = writeln!(out);
    }
}
