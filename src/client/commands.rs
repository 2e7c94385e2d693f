//! The client's reads and small writes: `kiln jobs list|get|cancel|watch|outputs`,
//! `kiln pipelines run|list|get|cancel|watch`, `kiln models`, `kiln usage`,
//! `kiln deliveries`. Each prints a table (or, with `--json`, the API's own answer) and
//! returns the exit status it stands for.

use super::run::{finish, wait_and_fetch};
use super::{colored, exit_for, usage_error, Client, Connect, Exit};
use anstream::{eprintln, println};
use serde_json::Value;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum JobsCommand {
    /// The newest jobs first.
    List {
        /// Only these statuses (comma list: queued,running,succeeded,failed,canceled).
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        connect: Connect,
    },
    /// One job: status, attempts, outputs.
    Get {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Cancel a queued or running job.
    Cancel {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Follow a job to its end, then download its outputs.
    Watch {
        id: String,
        /// Where the outputs are written.
        #[arg(long, default_value = ".")]
        output: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    /// Download a finished job's outputs.
    Outputs {
        id: String,
        #[arg(long, default_value = ".")]
        output: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum PipelinesCommand {
    /// Submit a pipeline from a JSON file (`{"steps": [...]}`, as `POST /v1/pipelines` takes).
    Run {
        file: PathBuf,
        /// Wait for it, then download its outputs.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value = ".")]
        output: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
    List {
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        connect: Connect,
    },
    Get {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    Cancel {
        id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Follow a pipeline to its end, then download its outputs.
    Watch {
        id: String,
        #[arg(long, default_value = ".")]
        output: PathBuf,
        #[command(flatten)]
        connect: Connect,
    },
}

fn job_row(job: &Value) -> Vec<String> {
    let status = job["status"].as_str().unwrap_or("");
    let detail = match status {
        "queued" => job["queue_position"]
            .as_u64()
            .map(|n| format!("{n} ahead"))
            .unwrap_or_default(),
        "running" => job["progress"]
            .as_f64()
            .map(|p| format!("{:.0}%", p * 100.0))
            .unwrap_or_default(),
        "failed" => job["error"]["code"].as_str().unwrap_or("").to_owned(),
        _ => String::new(),
    };
    vec![
        job["id"].as_str().unwrap_or("").to_owned(),
        job["model"].as_str().unwrap_or("").to_owned(),
        colored(status),
        detail,
        job["created_at"].as_str().unwrap_or("").to_owned(),
        format!("{}", job["cost"].as_f64().unwrap_or(0.0)),
    ]
}

fn print_job(client: &Client, job: &Value) {
    if client.json {
        println!("{job:#}");
        return;
    }
    super::table(
        &["job", "model", "status", "", "created", "cost"],
        &[job_row(job)],
    );
    let attempts: Vec<Vec<String>> = job["attempts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            vec![
                a["number"].to_string(),
                a["route"].as_str().unwrap_or("").to_owned(),
                colored(a["outcome"].as_str().unwrap_or("running")),
                a["error_class"].as_str().unwrap_or("").to_owned(),
                a["error"]["code"].as_str().unwrap_or("").to_owned(),
                a["fallback_reason"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    if !attempts.is_empty() {
        println!();
        super::table(
            &[
                "attempt",
                "route",
                "outcome",
                "class",
                "error",
                "fallback reason",
            ],
            &attempts,
        );
    }
    let outputs: Vec<Vec<String>> = job["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                o["index"].to_string(),
                o["content_type"].as_str().unwrap_or("").to_owned(),
                o["bytes"].to_string(),
                o["expires_at"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    if !outputs.is_empty() {
        println!();
        super::table(&["output", "type", "bytes", "expires"], &outputs);
    }
    if let Some(message) = job["error"]["message"].as_str() {
        println!(
            "\nerror: {message} ({})",
            job["error"]["code"].as_str().unwrap_or("")
        );
    }
}

pub async fn jobs(command: JobsCommand) -> anyhow::Result<Exit> {
    match command {
        JobsCommand::List {
            status,
            model,
            limit,
            connect,
        } => {
            let client = Client::connect(&connect)?;
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            query.append_pair("limit", &limit.to_string());
            if let Some(s) = &status {
                query.append_pair("status", s);
            }
            if let Some(m) = &model {
                query.append_pair("model", m);
            }
            let page = client.get(&format!("/v1/jobs?{}", query.finish())).await?;
            if client.json {
                println!("{page:#}");
            } else {
                let rows: Vec<Vec<String>> = page["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(job_row)
                    .collect();
                super::table(&["job", "model", "status", "", "created", "cost"], &rows);
            }
            Ok(Exit::Ok)
        }
        JobsCommand::Get { id, connect } => {
            let client = Client::connect(&connect)?;
            let job = client.get(&format!("/v1/jobs/{id}")).await?;
            print_job(&client, &job);
            Ok(Exit::Ok)
        }
        JobsCommand::Cancel { id, connect } => {
            let client = Client::connect(&connect)?;
            let job = client.post(&format!("/v1/jobs/{id}/cancel"), None).await?;
            print_job(&client, &job);
            Ok(Exit::Ok)
        }
        JobsCommand::Watch {
            id,
            output,
            connect,
        } => {
            let client = Client::connect(&connect)?;
            wait_and_fetch(&client, &id, &output, false).await
        }
        JobsCommand::Outputs {
            id,
            output,
            connect,
        } => {
            let client = Client::connect(&connect)?;
            let job = client.get(&format!("/v1/jobs/{id}")).await?;
            finish(&client, &job, &output).await
        }
    }
}

pub async fn pipelines(command: PipelinesCommand) -> anyhow::Result<Exit> {
    match command {
        PipelinesCommand::Run {
            file,
            wait,
            output,
            connect,
        } => {
            let client = Client::connect(&connect)?;
            let text = std::fs::read_to_string(&file)
                .map_err(|e| usage_error(format!("cannot read {}: {e}", file.display())))?;
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| usage_error(format!("{} is not JSON: {e}", file.display())))?;
            let pipeline = client.post("/v1/pipelines", Some(&body)).await?;
            let id = pipeline["id"].as_str().unwrap_or_default().to_owned();
            if !wait {
                if client.json {
                    println!("{pipeline:#}");
                } else {
                    println!("{id}");
                }
                return Ok(Exit::Ok);
            }
            watch_pipeline(&client, &id, &output).await
        }
        PipelinesCommand::List { limit, connect } => {
            let client = Client::connect(&connect)?;
            let page = client.get(&format!("/v1/pipelines?limit={limit}")).await?;
            if client.json {
                println!("{page:#}");
            } else {
                let rows: Vec<Vec<String>> = page["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            p["id"].as_str().unwrap_or("").to_owned(),
                            colored(p["status"].as_str().unwrap_or("")),
                            steps_of(p),
                            p["created_at"].as_str().unwrap_or("").to_owned(),
                        ]
                    })
                    .collect();
                super::table(&["pipeline", "status", "steps", "created"], &rows);
            }
            Ok(Exit::Ok)
        }
        PipelinesCommand::Get { id, connect } => {
            let client = Client::connect(&connect)?;
            let p = client.get(&format!("/v1/pipelines/{id}")).await?;
            print_pipeline(&client, &p);
            Ok(Exit::Ok)
        }
        PipelinesCommand::Cancel { id, connect } => {
            let client = Client::connect(&connect)?;
            let p = client
                .post(&format!("/v1/pipelines/{id}/cancel"), None)
                .await?;
            print_pipeline(&client, &p);
            Ok(Exit::Ok)
        }
        PipelinesCommand::Watch {
            id,
            output,
            connect,
        } => {
            let client = Client::connect(&connect)?;
            watch_pipeline(&client, &id, &output).await
        }
    }
}

fn steps_of(p: &Value) -> String {
    p["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{}:{}",
                s["name"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(" → ")
}

fn print_pipeline(client: &Client, p: &Value) {
    if client.json {
        println!("{p:#}");
        return;
    }
    let rows: Vec<Vec<String>> = p["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                s["name"].as_str().unwrap_or("").to_owned(),
                s["model"].as_str().unwrap_or("").to_owned(),
                colored(s["status"].as_str().unwrap_or("")),
                s["job_id"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    println!(
        "pipeline {} {}",
        p["id"].as_str().unwrap_or(""),
        colored(p["status"].as_str().unwrap_or(""))
    );
    super::table(&["step", "model", "status", "job"], &rows);
}

async fn watch_pipeline(
    client: &Client,
    id: &str,
    output: &std::path::Path,
) -> anyhow::Result<Exit> {
    let path = format!("/v1/pipelines/{id}/events");
    if super::follow_with_progress(client, &path, |p| format!("{id} {}", steps_of(p))).await? {
        eprintln!("kiln: stopped waiting; pipeline {id} goes on. Follow it again with: kiln pipelines watch {id}");
        return Ok(Exit::Detached);
    }
    let p = client.get(&format!("/v1/pipelines/{id}")).await?;
    let status = p["status"].as_str().unwrap_or("");
    if status != "succeeded" {
        print_pipeline(client, &p);
        let error = &p["error"];
        return Err(super::ClientError {
            exit: exit_for(status),
            message: format!(
                "pipeline {id} {status}: {}",
                error["message"].as_str().unwrap_or("no reason given")
            ),
        }
        .into());
    }
    // The pipeline's outputs are its final steps'; each is downloaded from its step's job.
    let mut jobs = Vec::new();
    for out in p["outputs"].as_array().into_iter().flatten() {
        let step = out["step"].as_str().unwrap_or("");
        let job_id = p["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == step)
            .and_then(|s| s["job_id"].as_str());
        if let Some(job_id) = job_id {
            if !jobs.contains(&job_id.to_owned()) {
                jobs.push(job_id.to_owned());
            }
        }
    }
    let mut written = Vec::new();
    for job_id in jobs {
        let job = client.get(&format!("/v1/jobs/{job_id}")).await?;
        written.extend(client.download_outputs(&job, output).await?);
    }
    if client.json {
        let mut p = p.clone();
        p["downloaded"] = serde_json::json!(written);
        println!("{p:#}");
    } else {
        for path in &written {
            println!("{}", path.display());
        }
        eprintln!("kiln: pipeline {id} {}", colored(status));
    }
    Ok(Exit::Ok)
}

pub async fn models(connect: Connect) -> anyhow::Result<Exit> {
    let client = Client::connect(&connect)?;
    let models = client.get("/v1/models").await?;
    if client.json {
        println!("{models:#}");
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let inputs: Vec<String> = m["input_schema"]["properties"]
                .as_object()
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            vec![
                m["name"].as_str().unwrap_or("").to_owned(),
                m["output"].as_str().unwrap_or("").to_owned(),
                inputs.join(" "),
            ]
        })
        .collect();
    super::table(&["model", "makes", "inputs"], &rows);
    Ok(Exit::Ok)
}

pub async fn usage(
    connect: Connect,
    by: String,
    from: Option<String>,
    to: Option<String>,
) -> anyhow::Result<Exit> {
    let client = Client::connect(&connect)?;
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    query.append_pair("group_by", &by);
    if let Some(from) = &from {
        query.append_pair("from", from);
    }
    if let Some(to) = &to {
        query.append_pair("to", to);
    }
    let usage = client.get(&format!("/v1/usage?{}", query.finish())).await?;
    if client.json {
        println!("{usage:#}");
        return Ok(Exit::Ok);
    }
    let row = |g: &Value| {
        vec![
            g["key"].as_str().unwrap_or("").to_owned(),
            g["jobs"].to_string(),
            g["succeeded"].to_string(),
            g["failed"].to_string(),
            g["fallbacks"].to_string(),
            format!("{:.4}", g["cost"].as_f64().unwrap_or(0.0)),
        ]
    };
    let mut rows: Vec<Vec<String>> = usage["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(row)
        .collect();
    rows.push(row(&usage["total"]));
    super::table(
        &[&by, "jobs", "succeeded", "failed", "fallbacks", "cost"],
        &rows,
    );
    Ok(Exit::Ok)
}

pub async fn deliveries(
    connect: Connect,
    job: String,
    redeliver: Option<String>,
) -> anyhow::Result<Exit> {
    let client = Client::connect(&connect)?;
    if let Some(delivery) = redeliver {
        client
            .post(
                &format!("/v1/jobs/{job}/deliveries/{delivery}/redeliver"),
                None,
            )
            .await?;
        eprintln!("kiln: delivery {delivery} scheduled again");
    }
    let list = client.get(&format!("/v1/jobs/{job}/deliveries")).await?;
    if client.json {
        println!("{list:#}");
        return Ok(Exit::Ok);
    }
    let rows: Vec<Vec<String>> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let last = d["tries"].as_array().and_then(|t| t.last());
            vec![
                d["id"].as_str().unwrap_or("").to_owned(),
                d["type"].as_str().unwrap_or("").to_owned(),
                colored(d["status"].as_str().unwrap_or("")),
                d["tries"].as_array().map_or(0, Vec::len).to_string(),
                last.and_then(|t| t["status_code"].as_u64())
                    .map(|c| c.to_string())
                    .or_else(|| last.and_then(|t| t["error"].as_str()).map(str::to_owned))
                    .unwrap_or_default(),
                d["url"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    super::table(
        &["delivery", "event", "status", "tries", "last answer", "url"],
        &rows,
    );
    Ok(Exit::Ok)
}
