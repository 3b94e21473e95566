//! The MCP server handler: the tools, resources, prompts and utilities that the
//! `@modelcontextprotocol/conformance` server scenarios exercise.
// Logging, sampling and resources/subscribe are deprecated in the 2026-07-28
// revision but are exactly what the 2025-06-18 / 2025-11-25 scenarios test.
#![allow(deprecated)]

use std::{
    borrow::Cow,
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, model::*, service::RequestContext};
use serde_json::{Value, json};

use crate::streams::StreamControl;

/// 1x1 red pixel PNG.
const PNG_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
/// 8 samples of silence: 8 kHz, mono, 8-bit PCM WAV.
const WAV_BASE64: &str = "UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQgAAACAgICAgICAgA==";

/// How long a client should wait before reconnecting a closed SSE stream.
pub const SSE_RETRY: Duration = Duration::from_secs(1);
/// How long `test_reconnection` waits for the client to resume its stream.
const RESUME_WAIT: Duration = Duration::from_secs(10);

const STATIC_TEXT_URI: &str = "test://static-text";
const STATIC_BINARY_URI: &str = "test://static-binary";
const WATCHED_URI: &str = "test://watched-resource";
const TEMPLATE_URI: &str = "test://template/{id}/data";

/// Per-session server state; the HTTP service builds one per MCP session.
#[derive(Clone)]
pub struct ConformanceServer {
    log_level: Arc<Mutex<LoggingLevel>>,
    subscriptions: Arc<Mutex<HashSet<String>>>,
}

impl Default for ConformanceServer {
    fn default() -> Self {
        Self {
            log_level: Arc::new(Mutex::new(LoggingLevel::Info)),
            subscriptions: Arc::default(),
        }
    }
}

fn severity(level: LoggingLevel) -> u8 {
    match level {
        LoggingLevel::Debug => 0,
        LoggingLevel::Info => 1,
        LoggingLevel::Notice => 2,
        LoggingLevel::Warning => 3,
        LoggingLevel::Error => 4,
        LoggingLevel::Critical => 5,
        LoggingLevel::Alert => 6,
        LoggingLevel::Emergency => 7,
    }
}

/// Turn a `json!` object literal into a tool input schema.
fn schema(value: Value) -> Arc<JsonObject> {
    match value {
        Value::Object(map) => Arc::new(map),
        _ => unreachable!("tool schemas are object literals"),
    }
}

fn no_args() -> Arc<JsonObject> {
    schema(json!({ "type": "object", "properties": {} }))
}

fn tool(name: &'static str, description: &'static str, input_schema: Arc<JsonObject>) -> Tool {
    Tool::new(name, description, input_schema)
}

fn tools() -> Vec<Tool> {
    vec![
        tool("test_simple_text", "Returns simple text content", no_args()),
        tool(
            "test_image_content",
            "Returns image content (1x1 PNG)",
            no_args(),
        ),
        tool(
            "test_audio_content",
            "Returns audio content (tiny WAV)",
            no_args(),
        ),
        tool(
            "test_embedded_resource",
            "Returns an embedded text resource",
            no_args(),
        ),
        tool(
            "test_multiple_content_types",
            "Returns text, image and embedded resource content",
            no_args(),
        ),
        tool(
            "test_tool_with_logging",
            "Sends three log notifications while running",
            no_args(),
        ),
        tool(
            "test_tool_with_progress",
            "Reports progress 0/50/100 of 100 when given a progress token",
            no_args(),
        ),
        tool(
            "test_error_handling",
            "Always returns a tool error",
            no_args(),
        ),
        tool(
            "test_sampling",
            "Asks the client for an LLM completion (sampling/createMessage)",
            schema(json!({
                "type": "object",
                "properties": { "prompt": { "type": "string", "description": "The prompt to send to the LLM" } },
                "required": ["prompt"]
            })),
        ),
        tool(
            "test_elicitation",
            "Asks the client for user input (elicitation/create)",
            schema(json!({
                "type": "object",
                "properties": { "message": { "type": "string", "description": "The message to show the user" } },
                "required": ["message"]
            })),
        ),
        tool(
            "test_elicitation_sep1034_defaults",
            "Elicitation whose schema has defaults for every primitive type (SEP-1034)",
            no_args(),
        ),
        tool(
            "test_elicitation_sep1330_enums",
            "Elicitation whose schema has all five enum variants (SEP-1330)",
            no_args(),
        ),
        tool(
            "json_schema_2020_12_tool",
            "Tool with JSON Schema 2020-12 features",
            schema(json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "$defs": {
                    "address": {
                        "type": "object",
                        "properties": {
                            "street": { "type": "string" },
                            "city": { "type": "string" }
                        }
                    }
                },
                "properties": {
                    "name": { "type": "string" },
                    "address": { "$ref": "#/$defs/address" }
                },
                "additionalProperties": false
            })),
        ),
        tool(
            "test_reconnection",
            "Closes its SSE stream mid-call and answers after the client resumes it (SEP-1699)",
            no_args(),
        ),
    ]
}

fn text_result(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::success(vec![ContentBlock::text(text)]).into()
}

fn tool_error(text: impl Into<String>) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

fn string_arg<'a>(args: Option<&'a JsonObject>, name: &str) -> Result<&'a str, McpError> {
    args.and_then(|a| a.get(name))
        .and_then(Value::as_str)
        .ok_or_else(|| McpError::invalid_params(format!("missing string argument '{name}'"), None))
}

fn elicitation_schema(value: Value) -> Result<ElicitationSchema, McpError> {
    serde_json::from_value(value)
        .map_err(|e| McpError::internal_error(format!("invalid elicitation schema: {e}"), None))
}

fn sep1034_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "description": "User name", "default": "John Doe" },
            "age": { "type": "integer", "description": "User age", "default": 30 },
            "score": { "type": "number", "description": "User score", "default": 95.5 },
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active"
            },
            "verified": { "type": "boolean", "description": "Verification status", "default": true }
        }
    })
}

fn sep1330_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Untitled single-select",
                "enum": ["option1", "option2", "option3"]
            },
            "titledSingle": {
                "type": "string",
                "description": "Titled single-select",
                "oneOf": [
                    { "const": "value1", "title": "First Option" },
                    { "const": "value2", "title": "Second Option" },
                    { "const": "value3", "title": "Third Option" }
                ]
            },
            "legacyEnum": {
                "type": "string",
                "description": "Legacy titled enum (enumNames)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"]
            },
            "untitledMulti": {
                "type": "array",
                "description": "Untitled multi-select",
                "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
            },
            "titledMulti": {
                "type": "array",
                "description": "Titled multi-select",
                "items": {
                    "anyOf": [
                        { "const": "value1", "title": "First Choice" },
                        { "const": "value2", "title": "Second Choice" },
                        { "const": "value3", "title": "Third Choice" }
                    ]
                }
            }
        }
    })
}

impl ConformanceServer {
    async fn log(&self, context: &RequestContext<RoleServer>, level: LoggingLevel, message: &str) {
        let threshold = *self
            .log_level
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if severity(level) >= severity(threshold) {
            let params = LoggingMessageNotificationParam::new(level, json!(message))
                .with_logger("conformance-server");
            let _ = context.peer.notify_logging_message(params).await;
        }
    }

    async fn with_logging(&self, context: &RequestContext<RoleServer>) -> CallToolResponse {
        self.log(context, LoggingLevel::Info, "Tool execution started")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(context, LoggingLevel::Info, "Tool processing data")
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(context, LoggingLevel::Info, "Tool execution completed")
            .await;
        text_result("Tool with logging executed successfully")
    }

    async fn with_progress(context: &RequestContext<RoleServer>) -> CallToolResponse {
        let token = context.meta.get_progress_token();
        for (step, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(token) = &token {
                let params = ProgressNotificationParam::new(token.clone(), progress)
                    .with_total(100.0)
                    .with_message(format!("Completed step {} of 3", step + 1));
                let _ = context.peer.notify_progress(params).await;
            }
        }
        text_result("Tool with progress executed successfully")
    }

    async fn sampling(
        context: &RequestContext<RoleServer>,
        args: Option<&JsonObject>,
    ) -> Result<CallToolResponse, McpError> {
        let prompt = string_arg(args, "prompt")?;
        let supported = context
            .peer
            .peer_info()
            .is_some_and(|info| info.capabilities.sampling.is_some());
        if !supported {
            return Ok(tool_error("Client does not support sampling"));
        }
        let params = CreateMessageRequestParams::new(vec![SamplingMessage::user_text(prompt)], 100);
        Ok(match context.peer.create_message(params).await {
            Ok(result) => {
                let text = result
                    .message
                    .content
                    .first()
                    .and_then(|block| block.as_text())
                    .map(|t| t.text.clone())
                    .unwrap_or_default();
                text_result(format!("LLM response: {text}"))
            }
            Err(e) => tool_error(format!("Sampling failed: {e}")),
        })
    }

    async fn elicit(
        context: &RequestContext<RoleServer>,
        message: String,
        requested_schema: ElicitationSchema,
    ) -> CallToolResponse {
        let supported = context
            .peer
            .peer_info()
            .is_some_and(|info| info.capabilities.elicitation.is_some());
        if !supported {
            return tool_error("Client does not support elicitation");
        }
        let params = ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema,
        };
        match context.peer.create_elicitation(params).await {
            Ok(result) => {
                let action = serde_json::to_value(&result.action).unwrap_or(Value::Null);
                let action = action.as_str().unwrap_or("unknown");
                let content = result.content.unwrap_or(Value::Null);
                text_result(format!(
                    "Elicitation completed: action={action}, content={content}"
                ))
            }
            Err(e) => tool_error(format!("Elicitation failed: {e}")),
        }
    }

    async fn reconnection(context: &RequestContext<RoleServer>) -> CallToolResponse {
        let Some(stream) = context.extensions.get::<StreamControl>() else {
            // Not on a session POST stream (e.g. stateless); nothing to close.
            return text_result("Reconnection test completed (stream was not closed)");
        };
        match stream.close_and_await_resume(SSE_RETRY, RESUME_WAIT).await {
            Ok(true) => text_result("Reconnection test completed: client resumed the SSE stream"),
            Ok(false) => text_result("Reconnection test completed: client did not resume in time"),
            Err(e) => tool_error(format!("Failed to close SSE stream: {e}")),
        }
    }
}

fn resources() -> Vec<Resource> {
    vec![
        Resource::new(STATIC_TEXT_URI, "Static Text Resource")
            .with_description("A static text resource for testing")
            .with_mime_type("text/plain"),
        Resource::new(STATIC_BINARY_URI, "Static Binary Resource")
            .with_description("A static binary resource (1x1 PNG) for testing")
            .with_mime_type("image/png"),
        Resource::new(WATCHED_URI, "Watched Resource")
            .with_description("A resource that can be subscribed to")
            .with_mime_type("text/plain"),
    ]
}

/// Match `test://template/{id}/data` and return the `id`.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri
        .strip_prefix("test://template/")?
        .strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

fn prompts() -> Vec<Prompt> {
    let required = |name: &str, description: &str| {
        PromptArgument::new(name)
            .with_description(description)
            .with_required(true)
    };
    vec![
        Prompt::new(
            "test_simple_prompt",
            Some("A simple prompt without arguments"),
            None,
        ),
        Prompt::new(
            "test_prompt_with_arguments",
            Some("A prompt with required arguments"),
            Some(vec![
                required("arg1", "First test argument"),
                required("arg2", "Second test argument"),
            ]),
        ),
        Prompt::new(
            "test_prompt_with_embedded_resource",
            Some("A prompt that embeds a resource"),
            Some(vec![required(
                "resourceUri",
                "URI of the resource to embed",
            )]),
        ),
        Prompt::new(
            "test_prompt_with_image",
            Some("A prompt with image content"),
            None,
        ),
    ]
}

fn prompt_arg<'a>(args: Option<&'a JsonObject>, name: &str) -> Result<&'a str, McpError> {
    args.and_then(|a| a.get(name))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            McpError::invalid_params(format!("missing required argument '{name}'"), None)
        })
}

impl ServerHandler for ConformanceServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_prompts()
            .enable_resources()
            .enable_resources_subscribe()
            .enable_logging()
            .enable_completions()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "tollgate-conformance-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_protocol_version(ProtocolVersion::V_2025_11_25)
    }

    /// The scenarios target the session-based revisions up to 2025-11-25.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.as_ref();
        Ok(match request.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_image_content" => {
                CallToolResult::success(vec![ContentBlock::image(PNG_BASE64, "image/png")]).into()
            }
            "test_audio_content" => {
                CallToolResult::success(vec![ContentBlock::audio(WAV_BASE64, "audio/wav")]).into()
            }
            "test_embedded_resource" => {
                CallToolResult::success(vec![ContentBlock::resource(ResourceContents::text(
                    "This is an embedded resource content.",
                    "test://embedded-resource",
                ))])
                .into()
            }
            "test_multiple_content_types" => CallToolResult::success(vec![
                ContentBlock::text("Multiple content types test:"),
                ContentBlock::image(PNG_BASE64, "image/png"),
                ContentBlock::resource(
                    ResourceContents::text(
                        json!({ "test": "data", "value": 123 }).to_string(),
                        "test://mixed-content-resource",
                    )
                    .with_mime_type("application/json"),
                ),
            ])
            .into(),
            "test_tool_with_logging" => self.with_logging(&context).await,
            "test_tool_with_progress" => Self::with_progress(&context).await,
            "test_error_handling" => {
                tool_error("This tool intentionally returns an error for testing")
            }
            "test_sampling" => Self::sampling(&context, args).await?,
            "test_elicitation" => {
                let message = string_arg(args, "message")?.to_owned();
                let schema = elicitation_schema(json!({
                    "type": "object",
                    "properties": {
                        "username": { "type": "string", "description": "User's response" },
                        "email": { "type": "string", "description": "User's email address" }
                    },
                    "required": ["username", "email"]
                }))?;
                Self::elicit(&context, message, schema).await
            }
            "test_elicitation_sep1034_defaults" => {
                let schema = elicitation_schema(sep1034_schema())?;
                Self::elicit(
                    &context,
                    "Please review and update the form fields with defaults".into(),
                    schema,
                )
                .await
            }
            "test_elicitation_sep1330_enums" => {
                let schema = elicitation_schema(sep1330_schema())?;
                Self::elicit(
                    &context,
                    "Please select options from the enum fields".into(),
                    schema,
                )
                .await
            }
            "json_schema_2020_12_tool" => {
                let name = args
                    .and_then(|a| a.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or("world");
                text_result(format!("Hello, {name}!"))
            }
            "test_reconnection" => Self::reconnection(&context).await,
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        })
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(resources()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let template = ResourceTemplate::new(TEMPLATE_URI, "Template Resource")
            .with_description("A resource template with an {id} parameter")
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let uri = request.uri.as_str();
        let contents = match uri {
            STATIC_TEXT_URI => {
                ResourceContents::text("This is the content of the static text resource.", uri)
            }
            STATIC_BINARY_URI => {
                ResourceContents::blob(PNG_BASE64, uri).with_mime_type("image/png")
            }
            WATCHED_URI => ResourceContents::text("Watched resource content.", uri),
            _ => match template_id(uri) {
                Some(id) => ResourceContents::text(
                    json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                        .to_string(),
                    uri,
                )
                .with_mime_type("application/json"),
                None => {
                    return Err(McpError::resource_not_found(
                        format!("resource not found: {uri}"),
                        Some(json!({ "uri": uri })),
                    ));
                }
            },
        };
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.subscriptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(prompts()))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        let args = request.arguments.as_ref();
        let messages = match request.name.as_str() {
            "test_simple_prompt" => vec![PromptMessage::new_text(
                Role::User,
                "This is a simple prompt for testing.",
            )],
            "test_prompt_with_arguments" => {
                let arg1 = prompt_arg(args, "arg1")?;
                let arg2 = prompt_arg(args, "arg2")?;
                vec![PromptMessage::new_text(
                    Role::User,
                    format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"),
                )]
            }
            "test_prompt_with_embedded_resource" => {
                let uri = prompt_arg(args, "resourceUri")?;
                vec![
                    PromptMessage::new(
                        Role::User,
                        ContentBlock::resource(ResourceContents::text(
                            "Embedded resource content for testing.",
                            uri,
                        )),
                    ),
                    PromptMessage::new_text(
                        Role::User,
                        "Please process the embedded resource above.",
                    ),
                ]
            }
            "test_prompt_with_image" => vec![
                PromptMessage::new(Role::User, ContentBlock::image(PNG_BASE64, "image/png")),
                PromptMessage::new_text(Role::User, "Please analyze the image above."),
            ],
            other => {
                return Err(McpError::invalid_params(
                    format!("unknown prompt: {other}"),
                    None,
                ));
            }
        };
        Ok(GetPromptResult::new(messages).into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, McpError> {
        // Minimal completion: prefix-filter a fixed list for the prompt arguments.
        const CANDIDATES: [&str; 5] = ["paris", "park", "party", "test", "testing"];
        let prefix = request.argument.value.to_lowercase();
        let values = match request.r#ref.as_prompt_name() {
            Some("test_prompt_with_arguments") => CANDIDATES
                .iter()
                .filter(|c| c.starts_with(&prefix))
                .map(|c| c.to_string())
                .collect(),
            _ => Vec::new(),
        };
        let completion =
            CompletionInfo::new(values).map_err(|e| McpError::internal_error(e, None))?;
        Ok(CompleteResult::new(completion))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        *self
            .log_level
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = request.level;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[test]
    fn template_ids() {
        assert_eq!(template_id("test://template/123/data"), Some("123"));
        assert_eq!(template_id("test://template//data"), None);
        assert_eq!(template_id("test://template/1/2/data"), None);
        assert_eq!(template_id("test://static-text"), None);
    }

    #[test]
    fn elicitation_schemas_keep_their_keywords() {
        let defaults = serde_json::to_value(elicitation_schema(sep1034_schema()).unwrap()).unwrap();
        assert_eq!(defaults["properties"]["status"]["default"], json!("active"));
        assert_eq!(defaults["properties"]["score"]["default"], json!(95.5));
        assert_eq!(defaults["properties"]["age"]["default"], json!(30));

        let enums = serde_json::to_value(elicitation_schema(sep1330_schema()).unwrap()).unwrap();
        let props = &enums["properties"];
        assert!(props["legacyEnum"]["enumNames"].is_array());
        assert!(props["titledSingle"]["oneOf"].is_array());
        assert!(props["titledMulti"]["items"]["anyOf"].is_array());
        assert!(props["untitledMulti"]["items"]["enum"].is_array());
        assert!(props["untitledSingle"].get("oneOf").is_none());
    }

    #[test]
    fn json_schema_2020_12_tool_is_verbatim() {
        let tool = tools()
            .into_iter()
            .find(|t| t.name == "json_schema_2020_12_tool")
            .unwrap();
        assert_eq!(
            tool.input_schema["$schema"],
            json!("https://json-schema.org/draft/2020-12/schema")
        );
        assert!(tool.input_schema["$defs"]["address"].is_object());
        assert_eq!(tool.input_schema["additionalProperties"], json!(false));
    }
}
