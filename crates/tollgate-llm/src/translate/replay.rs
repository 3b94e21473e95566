//! From a stream's events to one response, and back: the response cache stores what a
//! stream said as a [`Response`] and replays it as a stream (or not) in any client dialect.

use super::{merge_usage, Block, BlockKind, Delta, Event, Response, StartKind, Stop};
use crate::provider::Usage;

/// Builds a [`Response`] from stream events.
#[derive(Default)]
pub struct Assembler {
    id: String,
    model: String,
    blocks: Vec<(usize, Block)>,
    usage: Option<Usage>,
    stop: Option<Stop>,
    done: bool,
    failed: bool,
}

impl Assembler {
    fn block(&mut self, index: usize) -> Option<&mut Block> {
        self.blocks
            .iter_mut()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, b)| b)
    }

    pub fn push(&mut self, ev: &Event) {
        match ev {
            Event::Start { id, model } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
            }
            Event::BlockStart { index, kind } => {
                let at = format!("content[{index}]");
                let kind = match kind {
                    StartKind::Text => BlockKind::Text(String::new()),
                    StartKind::Thinking => BlockKind::Thinking {
                        text: String::new(),
                        signature: None,
                    },
                    StartKind::RedactedThinking { data } => {
                        BlockKind::RedactedThinking { data: data.clone() }
                    }
                    StartKind::ToolCall { id, name } => BlockKind::ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                };
                self.blocks.push((*index, Block::new(kind, at)));
            }
            Event::Delta { index, delta } => {
                let Some(b) = self.block(*index) else { return };
                match (&mut b.kind, delta) {
                    (BlockKind::Text(t), Delta::Text(d)) => t.push_str(d),
                    (BlockKind::Thinking { text, .. }, Delta::Thinking(d)) => text.push_str(d),
                    (BlockKind::Thinking { signature, .. }, Delta::Signature(s)) => {
                        signature.get_or_insert_with(String::new).push_str(s)
                    }
                    (BlockKind::ToolCall { arguments, .. }, Delta::ToolArguments(a)) => {
                        arguments.push_str(a)
                    }
                    _ => {}
                }
            }
            Event::BlockStop { .. } => {}
            Event::Usage(u) => merge_usage(self.usage.get_or_insert_with(Usage::default), *u),
            Event::Finish(stop) => self.stop = Some(stop.clone()),
            Event::Error { .. } => self.failed = true,
            Event::Done => self.done = true,
        }
    }

    /// The response, if the stream completed without an error.
    pub fn finish(self) -> Option<Response> {
        if !self.done || self.failed {
            return None;
        }
        Some(Response {
            id: self.id,
            model: self.model,
            content: self.blocks.into_iter().map(|(_, b)| b).collect(),
            stop: self.stop.unwrap_or(Stop::End),
            usage: self.usage.unwrap_or_default(),
            created: None,
        })
    }
}

/// The events that stream a response, text in pieces of about `chunk` bytes.
pub fn events(res: &Response, chunk: usize) -> Vec<Event> {
    let mut out = vec![Event::Start {
        id: res.id.clone(),
        model: res.model.clone(),
    }];
    // Input usage first, as Anthropic reports it; the rest at the end.
    out.push(Event::Usage(Usage {
        prompt: res.usage.prompt,
        cached: res.usage.cached,
        cache_write: res.usage.cache_write,
        ..Usage::default()
    }));
    for (index, b) in res.content.iter().enumerate() {
        let (kind, deltas): (StartKind, Vec<Delta>) = match &b.kind {
            BlockKind::Text(t) => (
                StartKind::Text,
                pieces(t, chunk)
                    .map(|p| Delta::Text(p.to_owned()))
                    .collect(),
            ),
            BlockKind::Thinking { text, signature } => {
                let mut d: Vec<Delta> = pieces(text, chunk)
                    .map(|p| Delta::Thinking(p.to_owned()))
                    .collect();
                d.extend(signature.clone().map(Delta::Signature));
                (StartKind::Thinking, d)
            }
            BlockKind::RedactedThinking { data } => (
                StartKind::RedactedThinking { data: data.clone() },
                Vec::new(),
            ),
            BlockKind::ToolCall {
                id,
                name,
                arguments,
            } => (
                StartKind::ToolCall {
                    id: id.clone(),
                    name: name.clone(),
                },
                vec![Delta::ToolArguments(arguments.clone())],
            ),
            BlockKind::Image(_) | BlockKind::ToolResult { .. } => continue,
        };
        out.push(Event::BlockStart { index, kind });
        out.extend(
            deltas
                .into_iter()
                .map(|delta| Event::Delta { index, delta }),
        );
        out.push(Event::BlockStop { index });
    }
    out.push(Event::Usage(res.usage));
    out.push(Event::Finish(res.stop.clone()));
    out.push(Event::Done);
    out
}

/// Splits text into pieces of about `size` bytes, on character boundaries.
fn pieces(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let size = size.max(1);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = size.min(rest.len());
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_survives_streaming_and_reassembly() {
        let res = Response {
            id: "r1".into(),
            model: "m".into(),
            content: vec![
                Block::new(
                    BlockKind::Thinking {
                        text: "think".into(),
                        signature: Some("sig".into()),
                    },
                    "content[0]",
                ),
                Block::text("héllo wörld, how are you?", "content[1]"),
                Block::new(
                    BlockKind::ToolCall {
                        id: "c1".into(),
                        name: "f".into(),
                        arguments: "{\"a\":1}".into(),
                    },
                    "content[2]",
                ),
            ],
            stop: Stop::ToolUse,
            usage: Usage {
                prompt: 10,
                completion: 5,
                cached: 2,
                reasoning: 1,
                cache_write: 0,
            },
            created: None,
        };
        let mut a = Assembler::default();
        for ev in events(&res, 3) {
            a.push(&ev);
        }
        assert_eq!(a.finish(), Some(res));
        assert_eq!(pieces("ééé", 1).collect::<Vec<_>>(), ["é", "é", "é"]);
    }

    #[test]
    fn an_unfinished_or_failed_stream_is_not_a_response() {
        let mut a = Assembler::default();
        a.push(&Event::Start {
            id: "x".into(),
            model: "m".into(),
        });
        assert!(a.finish().is_none());
        let mut a = Assembler::default();
        a.push(&Event::Error {
            kind: "e".into(),
            message: "m".into(),
        });
        a.push(&Event::Done);
        assert!(a.finish().is_none());
    }
}
