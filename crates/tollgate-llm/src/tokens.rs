//! Counting tokens the upstream did not report: a stream the client cut short, or an upstream
//! that sent no usage. Counted with OpenAI's `o200k_base` encoding (a compact counter of our
//! own, `bpe.rs`, exact against tiktoken), loaded on first use; for other vendors' models it is
//! a close estimate, and records priced from it are marked `estimated`.

mod bpe;

use std::sync::OnceLock;

use serde_json::Value;

use self::bpe::Bpe;

fn encoder() -> Option<&'static Bpe> {
    static BPE: OnceLock<Option<Bpe>> = OnceLock::new();
    BPE.get_or_init(|| match Bpe::o200k_base() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "the o200k_base vocabulary did not load; counting bytes / 4");
            None
        }
    })
    .as_ref()
}

/// Tokens in a text.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    match encoder() {
        Some(bpe) => bpe.count(text) as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Per-message framing tokens chat models add (role markers), as OpenAI documents it.
const PER_MESSAGE: u64 = 3;

/// The prompt tokens of a request body: the text of its messages (or Responses `input`,
/// `instructions`, Anthropic `system`) and tool definitions, plus per-message framing.
pub fn prompt_tokens(body: &[u8]) -> u64 {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(body) else {
        return (body.len() as u64).div_ceil(4);
    };
    let mut text = String::new();
    let mut messages = 0u64;
    for (k, v) in &req {
        match k.as_str() {
            "messages" | "input" => {
                if let Value::Array(items) = v {
                    messages += items.len() as u64;
                }
                collect_text(v, &mut text);
            }
            "instructions" | "system" | "prompt" | "tools" | "functions" => {
                collect_text(v, &mut text)
            }
            _ => {}
        }
    }
    count(&text) + PER_MESSAGE * messages + PER_MESSAGE
}

/// Every string under a value, separated by newlines. Keys that carry no model-visible text
/// (`role`, `type`, ids) are skipped.
fn collect_text(v: &Value, out: &mut String) {
    match v {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        Value::Object(map) => {
            for (k, v) in map {
                if !matches!(
                    k.as_str(),
                    "role" | "type" | "id" | "call_id" | "tool_call_id"
                ) {
                    collect_text(v, out);
                }
            }
        }
        _ => {}
    }
}

/// The text an SSE transcript generated: chat deltas (content, reasoning, refusals, tool-call
/// arguments) and Responses API `*.delta` events.
pub fn generated_text(transcript: &[u8]) -> String {
    let mut out = String::new();
    for line in transcript.split(|&b| b == b'\n') {
        let Some(json) = line.strip_prefix(b"data:").map(<[u8]>::trim_ascii) else {
            continue;
        };
        let Ok(ev) = serde_json::from_slice::<Value>(json) else {
            continue;
        };
        if let Some(choices) = ev.get("choices").and_then(Value::as_array) {
            for c in choices {
                let Some(d) = c.get("delta") else { continue };
                for field in ["content", "reasoning_content", "reasoning", "refusal"] {
                    if let Some(s) = d.get(field).and_then(Value::as_str) {
                        out.push_str(s);
                    }
                }
                if let Some(calls) = d.get("tool_calls").and_then(Value::as_array) {
                    for call in calls {
                        let f = call.get("function");
                        for field in ["name", "arguments"] {
                            if let Some(s) = f.and_then(|f| f.get(field)).and_then(Value::as_str) {
                                out.push_str(s);
                            }
                        }
                    }
                }
            }
        } else if ev
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with(".delta"))
        {
            if let Some(s) = ev.get("delta").and_then(Value::as_str) {
                out.push_str(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_the_real_encoding() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        // A long word is several tokens, not one.
        assert!(count("antidisestablishmentarianism") > 3);
    }

    #[test]
    fn prompt_counts_message_text_and_framing() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hello world"}]}]}"#;
        assert_eq!(
            prompt_tokens(body),
            count("be brief\nhello world\n") + 3 * 2 + 3
        );
    }

    #[test]
    fn generated_text_reads_chat_and_responses_streams() {
        let chat = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\",\"tool_calls\":[{\"function\":{\"arguments\":\"{}\"}}]}}]}\n\ndata: [DONE]\n\n";
        assert_eq!(generated_text(chat), "Hello{}");
        let resp = b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n";
        assert_eq!(generated_text(resp), "Hi");
    }
}
