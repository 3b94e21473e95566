//! Config parsing: any text gives a config or a list of field errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Interpolation sees a fixed environment; `${file:...}` reads are allowed (they fail).
    let env = |name: &str| (name == "FUZZ").then(|| "value".to_owned());
    if let Ok(config) = tollgate_core::config::Config::parse(text, "fuzz", &env) {
        // A valid config always prints (what `tollgate check` does).
        let _ = printed(&config);
    }
});

fn printed(config: &tollgate_core::config::Config) -> String {
    serde_json::to_string(config).unwrap_or_default()
}
