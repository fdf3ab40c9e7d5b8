//! The server's OpenAPI document, generated from the parameter tables the parsers use.

use cutout_core::edit::params::{Kind, Param};
use cutout_core::edit::{photoroom, removebg, simple};
use cutout_core::model::ModelSpec;
use serde_json::{Value, json};

fn schema(kind: Kind) -> Value {
    match kind {
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Number { min, max } => json!({"type": "number", "minimum": min, "maximum": max}),
        Kind::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::Enum(values) => json!({"type": "string", "enum": values}),
        Kind::Color => json!({"type": "string", "example": "FFFFFF"}),
        Kind::Spacing => json!({"oneOf": [
            {"type": "number", "minimum": 0, "maximum": 0.49},
            {"type": "string", "pattern": "^(\\d+(\\.\\d+)?%|\\d+(\\.\\d+)?px)$"}
        ]}),
        Kind::Text => json!({"type": "string"}),
        Kind::Url => json!({"type": "string", "format": "uri"}),
        Kind::File => json!({"type": "string", "format": "binary"}),
    }
}

/// The group a parameter belongs to, as the APIs' documents group them (the playground
/// lays its form out by these; `x-group` in the schema).
pub fn group(name: &str) -> &'static str {
    match name {
        "imageUrl" | "imageFile" | "image_file" | "image_file_b64" | "image_url" | "image" => {
            "Image"
        }
        n if n.starts_with("background.") || n.starts_with("bg_") => "Background",
        n if n.starts_with("outline.") => "Outline",
        n if n.starts_with("shadow") || n == "add_shadow" => "Shadow",
        "outputSize" | "maxWidth" | "maxHeight" | "size" | "scale" => "Output size",
        n if n.starts_with("padding") => "Padding",
        n if n.starts_with("margin") => "Margin",
        "scaling"
        | "horizontalAlignment"
        | "verticalAlignment"
        | "position"
        | "referenceBox"
        | "ignorePaddingAndSnapOnCroppedSides" => "Alignment",
        "crop" | "crop_margin" | "roi" => "Crop",
        "format" | "channels" | "preserveMetadata" => "Format",
        n if n.starts_with("export.") => "Format",
        _ => "Subject",
    }
}

fn properties(table: &[Param]) -> Value {
    let map: serde_json::Map<String, Value> = table
        .iter()
        .enumerate()
        .map(|(order, p)| {
            let mut s = schema(p.kind);
            s["description"] = json!(p.doc);
            // The playground's form: the group, and the table's order (JSON objects lose it).
            s["x-group"] = json!(group(p.name));
            s["x-order"] = json!(order);
            (p.name.to_string(), s)
        })
        .collect();
    Value::Object(map)
}

fn query_parameters(table: &[Param]) -> Value {
    table
        .iter()
        .filter(|p| !matches!(p.kind, Kind::File))
        .map(|p| json!({"name": p.name, "in": "query", "description": p.doc, "schema": schema(p.kind)}))
        .collect()
}

fn image_responses() -> Value {
    json!({
        "200": {"description": "The edited image", "headers": {
            "X-RateLimit-Limit": {"schema": {"type": "integer"}, "description": "Megapixel images per minute for this key"},
            "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
            "X-RateLimit-Reset": {"schema": {"type": "integer"}, "description": "Unix seconds when the minute ends"}
        }, "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}}
        }},
        "400": {"description": "Invalid parameters or unreadable image"},
        "402": {"description": "Insufficient credits"},
        "403": {"description": "Missing or invalid API key"},
        "413": {"description": "Upload too large"},
        "415": {"description": "Unsupported content type"},
        "429": {"description": "Rate limit exceeded; see Retry-After and X-RateLimit-*"},
        "503": {"description": "GPU queue full; see Retry-After"}
    })
}

fn form_body(table: &[Param], json_too: bool) -> Value {
    let schema = json!({"type": "object", "properties": properties(table)});
    let mut content = json!({"multipart/form-data": {"schema": schema}});
    if json_too {
        let text_only: Vec<Param> = table
            .iter()
            .copied()
            .filter(|p| !matches!(p.kind, Kind::File))
            .collect();
        let text_schema = json!({"type": "object", "properties": properties(&text_only)});
        content["application/x-www-form-urlencoded"] = json!({"schema": text_schema});
        content["application/json"] = json!({"schema": text_schema});
    }
    json!({"required": true, "content": content})
}

/// The document for a server whose masks come from `model` (none of the three APIs has a
/// per-request model parameter: a server runs the one model it was started with) and whose
/// request bodies may be up to `max_upload` bytes.
pub fn document(model: &ModelSpec, max_upload: u64) -> Value {
    let account = json!({"get": {"summary": "Account credits", "responses": {"200": {"description": "Credits"}}}});
    let description = format!(
        "Self-hosted background removal and product-photo editing, compatible with PhotoRoom \
         and remove.bg. Masks come from the {} model ({:?}, {}x{} input, licence {}), chosen \
         when the server starts (`cutout serve --model`).",
        model.name, model.architecture, model.input_size, model.input_size, model.licence
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "cutout",
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
            "x-cutout-model": {
                "name": model.name,
                "architecture": format!("{:?}", model.architecture),
                "inputSize": model.input_size,
                "licence": model.licence
            },
            "x-cutout-limits": {"maxUploadBytes": max_upload}
        },
        "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
        "security": [{"apiKey": []}],
        "paths": {
            "/v1/segment": {"post": {
                "summary": "Remove the background (PhotoRoom)",
                "requestBody": form_body(photoroom::V1_SEGMENT, false),
                "responses": image_responses()
            }},
            "/v2/edit": {
                "get": {
                    "summary": "Edit an image by URL (PhotoRoom v2)",
                    "parameters": query_parameters(photoroom::V2_EDIT),
                    "responses": image_responses()
                },
                "post": {
                    "summary": "Edit an uploaded image (PhotoRoom v2)",
                    "requestBody": form_body(photoroom::V2_EDIT, false),
                    "responses": image_responses()
                }
            },
            "/v1/account": account,
            "/v2/account": account,
            "/v1.0/removebg": {"post": {
                "summary": "Remove the background (remove.bg)",
                "requestBody": form_body(removebg::REMOVEBG, true),
                "responses": image_responses()
            }},
            "/v1.0/account": account,
            "/v1/remove-background": {"post": {
                "summary": "Remove the background (simple API)",
                "requestBody": form_body(simple::SIMPLE, false),
                "responses": image_responses()
            }}
        }
    })
}
