//! Every provider translation: any request body in a client dialect decodes or is refused, and
//! what decodes encodes for every upstream dialect; any upstream answer decodes or is refused,
//! and what decodes encodes for every client dialect.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_llm::translate::{self, Dialect};

const ALL: [Dialect; 5] = [
    Dialect::Chat,
    Dialect::Responses,
    Dialect::Messages,
    Dialect::Gemini,
    Dialect::Bedrock,
];
const CLIENTS: [Dialect; 3] = [Dialect::Chat, Dialect::Responses, Dialect::Messages];

fuzz_target!(|data: &[u8]| {
    if tollgate_core::http::json_depth_exceeds(data, 64).is_some() {
        return;
    }
    for from in CLIENTS {
        if let Ok((req, _)) = translate::decode_request(from, data) {
            for to in ALL {
                let mut loss = Default::default();
                let _ = translate::encode_request(to, &req, "fuzz-model", &mut loss);
            }
        }
    }
    for from in ALL {
        let mut loss = Default::default();
        if let Ok(res) = translate::decode_response(from, data, &mut loss) {
            for to in CLIENTS {
                let mut loss = Default::default();
                let _ = translate::encode_response(to, &res, &mut loss);
            }
        }
        let _ = translate::error_body(from, http::StatusCode::BAD_GATEWAY, data);
    }
});
