-- One conversation's audit records (agent hops, tool calls) for /admin/v1/conversations/{id}.
CREATE INDEX audit_log_conversation ON audit_log (conversation_id, seq);
