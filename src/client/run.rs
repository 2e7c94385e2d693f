//! `kiln run MODEL name=value … [--wait]`: one job from the shell. Values are typed by the
//! model's published input schema (an integer stays an integer, `true` a boolean, an object
//! JSON), so `width=64` is sent as `64`; `name=@file` uploads the file through `POST /v1/files`
//! and sends its URL (or, for a text input, sends the file's text). With `--wait` it follows the
//! job's event stream, drawing its place in the queue and the generator's progress on a
//! terminal, then downloads the outputs and prints their paths. Ctrl-C while waiting lets go of
//! the job (it keeps running) and says how to follow it again; `--cancel-on-interrupt`
//! cancels it instead.

use super::{
    colored, exit_for, follow_with_progress, progress_text, usage_error, Client, ClientError,
    Connect, Exit,
};
use anstream::{eprintln, println};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The model, as `kiln models` lists it (`demo/image`).
    pub model: String,
    /// The input: `name=value` (typed by the model's schema) or `name=@file` (uploaded).
    #[arg(value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// The dispatch lane: high, normal or low.
    #[arg(long)]
    pub priority: Option<String>,
    /// Where the job's events are posted (Standard Webhooks).
    #[arg(long)]
    pub webhook: Option<url::Url>,
    /// Wait for the job, then download its outputs.
    #[arg(long)]
    pub wait: bool,
    /// Where `--wait` writes the outputs.
    #[arg(long, default_value = ".")]
    pub output: PathBuf,
    /// On Ctrl-C while waiting, cancel the job instead of letting it run on.
    #[arg(long)]
    pub cancel_on_interrupt: bool,
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let client = Client::connect(&args.connect)?;
    let models = client.get("/v1/models").await?;
    let Some(model) = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == args.model.as_str())
    else {
        let names: Vec<&str> = models["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["name"].as_str())
            .collect();
        return Err(usage_error(format!(
            "there is no model '{}' on {} (there are: {})",
            args.model,
            client.base,
            names.join(", ")
        )));
    };
    let mut input = Map::new();
    for raw in &args.inputs {
        let (name, value) = raw
            .split_once('=')
            .ok_or_else(|| usage_error(format!("'{raw}': inputs are name=value or name=@file")))?;
        let schema = &model["input_schema"]["properties"][name];
        if schema.is_null() {
            let known: Vec<&String> = model["input_schema"]["properties"]
                .as_object()
                .map(|p| p.keys().collect())
                .unwrap_or_default();
            return Err(usage_error(format!(
                "{} takes no input '{name}' (it takes: {})",
                args.model,
                known
                    .iter()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let value = match value.strip_prefix('@') {
            Some(file) => from_file(&client, schema, Path::new(file)).await?,
            None => typed(name, value, schema)?,
        };
        input.insert(name.to_owned(), value);
    }
    let mut body = json!({"model": args.model, "input": input});
    if let Some(priority) = &args.priority {
        body["priority"] = json!(priority);
    }
    if let Some(webhook) = &args.webhook {
        body["webhook"] = json!(webhook);
    }
    let job = client.post("/v1/jobs", Some(&body)).await?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    if !args.wait {
        if client.json {
            println!("{job:#}");
        } else {
            println!("{id}");
            eprintln!(
                "kiln: job {id} is {}; follow it with: kiln jobs watch {id}",
                job["status"].as_str().unwrap_or("queued")
            );
        }
        return Ok(Exit::Ok);
    }
    wait_and_fetch(&client, &id, &args.output, args.cancel_on_interrupt).await
}

/// Follows a job to its end (or a Ctrl-C), then downloads its outputs into `dir`.
pub async fn wait_and_fetch(
    client: &Client,
    id: &str,
    dir: &Path,
    cancel_on_interrupt: bool,
) -> anyhow::Result<Exit> {
    let path = format!("/v1/jobs/{id}/events");
    if follow_with_progress(client, &path, progress_text).await? {
        if cancel_on_interrupt {
            client.post(&format!("/v1/jobs/{id}/cancel"), None).await?;
            eprintln!("kiln: canceled job {id}");
            return Ok(Exit::Canceled);
        }
        eprintln!(
            "kiln: stopped waiting; job {id} goes on. Follow it again with: kiln jobs watch {id}"
        );
        return Ok(Exit::Detached);
    }
    let job = client.get(&format!("/v1/jobs/{id}")).await?;
    finish(client, &job, dir).await
}

/// Reports a finished job: downloads and lists its outputs, or prints why it did not succeed.
pub async fn finish(client: &Client, job: &Value, dir: &Path) -> anyhow::Result<Exit> {
    let status = job["status"].as_str().unwrap_or("");
    let exit = exit_for(status);
    let id = job["id"].as_str().unwrap_or("");
    if exit != Exit::Ok {
        let error = &job["error"];
        let message = format!(
            "job {id} {}: {} ({})",
            colored(status),
            error["message"].as_str().unwrap_or("no reason given"),
            error["code"].as_str().unwrap_or(status)
        );
        if client.json {
            println!("{job:#}");
        }
        return Err(ClientError { exit, message }.into());
    }
    let paths = client.download_outputs(job, dir).await?;
    if client.json {
        let mut job = job.clone();
        job["downloaded"] = json!(paths);
        println!("{job:#}");
    } else {
        for path in &paths {
            println!("{}", path.display());
        }
        eprintln!("kiln: job {id} {}", colored(status));
    }
    Ok(exit)
}

/// `value` typed as the property's schema says.
fn typed(name: &str, value: &str, schema: &Value) -> anyhow::Result<Value> {
    let kind = match &schema["type"] {
        Value::String(t) => t.as_str(),
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    };
    let bad = |what: &str| usage_error(format!("{name}={value}: {name} is {what}"));
    Ok(match kind {
        "integer" => json!(value.parse::<i64>().map_err(|_| bad("a whole number"))?),
        "number" => json!(value.parse::<f64>().map_err(|_| bad("a number"))?),
        "boolean" => json!(value.parse::<bool>().map_err(|_| bad("true or false"))?),
        "object" | "array" => serde_json::from_str(value).map_err(|_| bad("JSON"))?,
        _ => json!(value),
    })
}

/// `name=@file`: an upload for an input that takes a URL (an image), the file's text otherwise.
async fn from_file(client: &Client, schema: &Value, path: &Path) -> anyhow::Result<Value> {
    let takes_url = schema["x-kiln-kind"] == "image"
        || schema["format"]
            .as_str()
            .is_some_and(|f| f.starts_with("uri"));
    if takes_url {
        let file = client.upload(path).await?;
        return Ok(file["urls"]["get"].clone());
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| usage_error(format!("cannot read {}: {e}", path.display())))?;
    typed("file", text.trim_end(), schema)
}
