//! The HTTP/JSON API against its description, `net/openapi.yaml`: schemathesis (pinned in
//! the venv of scripts/setup.sh) generates valid and invalid requests for every operation
//! from the document and checks every answer against it: no 5xx, documented statuses,
//! content types and headers, response bodies matching their schemas, valid requests
//! accepted, invalid ones refused, wrong methods answered 405 with an `Allow` header.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, tempdir};

/// A wall-clock bound on the whole schemathesis run (it normally takes seconds).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Test cases per operation and phase (VERDICT_SCHEMATHESIS_EXAMPLES overrides it).
const MAX_EXAMPLES: &str = "200";

/// A schemathesis hook: JSON bodies spell whole numbers as integers. For `type: integer`
/// schemathesis also sends `2.0` (the same integer to JSON Schema); the server, like
/// serde, reads an integer field only from an integer literal and answers `2.0` with 422.
/// The value is the same under JSON Schema either way, so no case changes from valid to
/// invalid or back.
const HOOKS: &str = r#"
import schemathesis

def _whole(v):
    if isinstance(v, float) and v.is_integer() and abs(v) <= 2**53:
        return int(v)
    if isinstance(v, list):
        return [_whole(x) for x in v]
    if isinstance(v, dict):
        return {k: _whole(x) for k, x in v.items()}
    return v

@schemathesis.hook
def before_call(context, case, **kwargs):
    if isinstance(case.body, (list, dict)):
        case.body = _whole(case.body)
"#;

/// negative_data_rejection takes only 400, 401, 403, 404, 405, 406, 409, 415, 422, 428,
/// 429 and 5xx as a refusal by default; the API also refuses with 413 (a batch of no events,
/// `[]` or an empty body, is code 7 batch_too_large), 411 and 431, as documented.
const CONFIG: &str = r#"
[checks.negative_data_rejection]
expected-statuses = [400, 404, 405, 411, 413, 422, 431, "5XX"]
"#;

fn schemathesis() -> std::path::PathBuf {
    let python = std::path::PathBuf::from(common::venv_python());
    python.with_file_name("schemathesis")
}

#[test]
fn the_http_api_matches_its_openapi_description() {
    let server = Server::launch_http(
        // Forwards on a loaded CI machine must not time out into 504s (a "server error").
        &common::topology(&[0, 1], "mesh_reply_timeout_ms = 10000"),
        &[],
        &["--no-probes"],
    );
    let http_port = server.http_port;

    let work = tempdir::Dir::new("schemathesis");
    let hooks = work.0.join("hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();
    let config = work.0.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let output = work.0.join("output.txt");
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/../net/openapi.yaml");
    let url = format!("http://127.0.0.1:{http_port}");
    let bin = schemathesis();
    let seed = std::env::var("VERDICT_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20".into());
    let max_examples =
        std::env::var("VERDICT_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| MAX_EXAMPLES.into());
    let args: Vec<String> = [
        "--config-file",
        config.to_str().unwrap(),
        "run",
        spec,
        "--url",
        &url,
        "--checks",
        "all",
        "--max-examples",
        &max_examples,
        // The API's length limits are in bytes of UTF-8 (net/src/validate.rs), which JSON
        // Schema cannot say: `maxLength` counts characters, equal to bytes only for ASCII.
        "--generation-codec",
        "ascii",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        // A fixed seed: CI runs the same cases every time (a new finding must not make an
        // unrelated landing fail at random). VERDICT_SCHEMATHESIS_SEED explores others.
        "--seed",
        &seed,
        "--no-color",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let started = Instant::now();
    let mut child = Command::new(&bin)
        .args(&args)
        .current_dir(&work.0)
        .env("SCHEMATHESIS_HOOKS", &hooks)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::fs::File::create(work.0.join("stderr.txt")).unwrap())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} runs (scripts/setup.sh: verdict_venv installs it): {e}",
                bin.display()
            )
        });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&output).unwrap_or_default();
    let err = std::fs::read_to_string(work.0.join("stderr.txt")).unwrap_or_default();
    let command = format!("{} {}", bin.display(), args.join(" "));
    let Some(status) = status else {
        panic!(
            "schemathesis ran past {RUN_TIMEOUT:?}: {command}\n--- stdout\n{out}\n--- stderr\n{err}"
        );
    };
    assert!(
        status.success(),
        "schemathesis found problems ({status}): {command}\n--- stdout\n{out}\n--- stderr\n{err}\n--- server stderr\n{}",
        server.stderr.lock().unwrap()
    );
    println!("{command}\n{out}");
    eprintln!("schemathesis took {:?}", started.elapsed());
}
