//! Open streams per principal (`limits.max_streams_per_key`).
//!
//! A long-lived response (an SSE model stream, an MCP GET stream, an A2A stream) holds a
//! [`StreamSlot`] for as long as its body lives; the slot is given back when the body is
//! dropped, whether the stream finished or the client went away. Counted per replica: the limit
//! bounds what one client can pin on one process (memory, file descriptors), which is local.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{ApiError, ErrorKind};
use crate::identity::Principal;

#[derive(Default)]
pub struct StreamSlots {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; dropping it frees the slot.
pub struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    holder: String,
}

impl StreamSlots {
    /// Takes a slot for `principal`, or refuses (429 `too_many_streams`) when it already holds
    /// `max` (0 means no limit).
    pub fn open(&self, principal: &Principal, max: usize) -> Result<StreamSlot, ApiError> {
        let holder = principal.label();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(holder.clone()).or_insert(0);
        if max > 0 && *n >= max {
            return Err(ApiError::new(
                ErrorKind::LimitExceeded,
                format!(
                    "this key already holds {max} open streams, the most allowed; close one first"
                ),
            )
            .code("too_many_streams"));
        }
        *n += 1;
        Ok(StreamSlot {
            open: self.open.clone(),
            holder,
        })
    }

    /// How many streams `principal` holds open.
    pub fn held(&self, principal: &Principal) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&principal.label()).copied().unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.holder) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.holder);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_per_principal_and_freed_on_drop() {
        let slots = StreamSlots::default();
        let (a, mut b) = (Principal::master(), Principal::anonymous());
        b.key_id = Some("k-b".into());
        let first = slots.open(&a, 2).unwrap();
        let _second = slots.open(&a, 2).unwrap();
        let refused = slots.open(&a, 2).err().unwrap();
        assert_eq!(refused.kind, ErrorKind::LimitExceeded);
        // Another principal has its own count.
        let _other = slots.open(&b, 2).unwrap();
        drop(first);
        assert_eq!(slots.held(&a), 1);
        let _third = slots.open(&a, 2).unwrap();
        // 0 is no limit.
        let many: Vec<_> = (0..100).map(|_| slots.open(&b, 0).unwrap()).collect();
        assert_eq!(slots.held(&b), 101);
        drop(many);
        assert_eq!(slots.held(&b), 1);
    }
}
