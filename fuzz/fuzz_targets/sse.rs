//! SSE parsing, as the tool layer reads upstream streams and the model layer reads provider
//! streams: arbitrary bytes split at arbitrary points give events or a size refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_llm::translate::{stream_decoder, Dialect};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses where chunks are cut, so split points vary too.
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 64) + 1;

    let mut whole = tollgate_mcp::sse::Parser::new(4096);
    let mut pieces = tollgate_mcp::sse::Parser::new(4096);
    let all = whole.feed(body);
    let mut split = Ok(Vec::new());
    for chunk in body.chunks(step) {
        match pieces.feed(chunk) {
            Ok(mut evs) => {
                if let Ok(acc) = split.as_mut() {
                    acc.append(&mut evs);
                }
            }
            Err(e) => {
                split = Err(e);
                break;
            }
        }
    }
    // However the bytes arrive, the events are the same.
    if let (Ok(a), Ok(b)) = (&all, &split) {
        assert_eq!(a, b, "chunking changed the events");
    }

    for dialect in [
        Dialect::Chat,
        Dialect::Messages,
        Dialect::Gemini,
        Dialect::Bedrock,
    ] {
        let mut decoder = stream_decoder(dialect);
        let mut out = Vec::new();
        for chunk in body.chunks(step) {
            decoder.feed(chunk, &mut out);
        }
        decoder.finish(&mut out);
    }
});
