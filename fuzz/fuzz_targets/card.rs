//! A2A card canonicalisation (JCS-style, what card signatures cover): canonical output is valid
//! JSON equal to the input, and canonicalising it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if tollgate_core::http::json_depth_exceeds(data, 64).is_some() {
        return;
    }
    let Ok(card) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut once = Vec::new();
    tollgate_core::canonical::write(&card, &mut once);
    let back: serde_json::Value = serde_json::from_slice(&once).expect("canonical output is JSON");
    let mut twice = Vec::new();
    tollgate_core::canonical::write(&back, &mut twice);
    assert_eq!(once, twice, "canonicalisation is not idempotent");
    // What a signature covers (the card without its signatures) never panics either.
    let _ = tollgate_a2a::card::signing_input(&card);
    let _ = tollgate_a2a::card::digest(&card);
});
