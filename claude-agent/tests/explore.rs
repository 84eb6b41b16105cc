use mainloop_testkit::anthropic::{FakeAnthropic, Reply};
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn explore() {
    let fake = FakeAnthropic::start().await.unwrap();
    let mode = std::env::var("EXPLORE").unwrap_or_default();
    let home = tempfile::tempdir().unwrap();
    let plan_path = format!("{}/.claude/plans/my-plan.md", home.path().display());
    let script: Vec<Reply> = match mode.as_str() {
        "plan" => vec![Reply::tool_use("ExitPlanMode", serde_json::json!({"plan": "# The plan\n\nDo X."})).with_usage(100, 20), Reply::text("Plan submitted.").with_usage(50, 5)],
        "ask" => vec![Reply::tool_use("AskUserQuestion", serde_json::json!({"questions": [
            {"question": "Which DB?", "header": "Database", "options": [{"label": "Postgres", "description": "big"}, {"label": "SQLite", "description": "small"}], "multiSelect": false},
            {"question": "Which auth?", "header": "Auth method", "options": [{"label": "JWT", "description": "tokens"}, {"label": "Session", "description": "cookies"}], "multiSelect": true}
        ]})), Reply::text("Waiting for answers.")],
        "write" => vec![Reply::tool_use("Write", serde_json::json!({"file_path": format!("{}/hello.txt", std::env::var("CWD").unwrap()), "content": "hi\n"})), Reply::text("Wrote it.")],
        "error" => vec![],
        "exitplan" => vec![Reply::tool_use("ExitPlanMode", serde_json::json!({"plan": "# P"})), Reply::text("ok")],
        "planfile" => vec![Reply::tool_use("Write", serde_json::json!({"file_path": plan_path, "content": "# File plan\n\nStep 1."})), Reply::tool_use("ExitPlanMode", serde_json::json!({})), Reply::text("Here is the plan: step 1.")],
        _ => vec![],
    };
    let is_error = mode == "error";
    fake.set_default(move |req| {
        eprintln!("DEFAULT for model={:?} tools={} last_user={:?}", req.model(), req.tool_names().len(), req.last_user_text().map(|t| t.chars().take(200).collect::<String>()));
        if is_error { Reply::error(400, "invalid_request_error", "boom") } else { Reply::text("default text") }
    });
    for r in script { fake.push(r); }
    let cwd = std::env::var("CWD").unwrap_or_else(|_| home.path().display().to_string());
    let perm = std::env::var("PERM").unwrap_or("plan".into());
    let base = fake.base_url();
    let key = fake.api_key().to_owned();
    let home_path = home.path().to_owned();
    let extra: Vec<(String, String)> = std::env::var("EXTRA").unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(|kv| { let (k, v) = kv.split_once('=').unwrap(); (k.to_owned(), v.to_owned()) }).collect();
    let model = std::env::var("MODEL").unwrap_or("claude-opus-4-1".into());
    let program = std::env::var("HARNESS").unwrap_or("/tmp/cc/node_modules/.bin/claude".into());
    let out = tokio::task::spawn_blocking(move || Command::new(program)
        .envs(extra)
        .args(if std::env::var("SDK").is_ok() { vec!["-p", "--input-format", "stream-json", "--permission-prompt-tool", "stdio", "--output-format", "stream-json", "--verbose", "--model", &model, "--permission-mode", &perm] } else { vec!["-p", "Please do the task", "--output-format", "stream-json", "--verbose", "--model", &model, "--permission-mode", &perm] })
        .stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped())
        .current_dir(&cwd)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", &home_path)
        .env("ANTHROPIC_BASE_URL", base)
        .env("ANTHROPIC_API_KEY", key)
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .spawn().map(|mut child| { use std::io::Write; let mut stdin = child.stdin.take().unwrap(); if std::env::var("SDK").is_ok() { writeln!(stdin, "{}", serde_json::json!({"type":"user","message":{"role":"user","content":"Please do the task"},"parent_tool_use_id":null,"session_id":""})).unwrap(); } drop(stdin); child.wait_with_output().unwrap() }).unwrap()).await.unwrap();
    println!("STATUS {:?}", out.status);
    println!("STDOUT\n{}", String::from_utf8_lossy(&out.stdout));
    println!("STDERR\n{}", String::from_utf8_lossy(&out.stderr));
    for r in fake.requests() {
        println!("REQ {} {} {:?} -> {} {:?} model={:?} stream={} tools={:?}\n  SYSTEM: {}\n  LASTUSER: {:?}", r.method, r.path, r.query, r.status, r.error, r.model(), r.is_streaming(), r.tool_names(), r.system_text().chars().take(300).collect::<String>(), r.last_user_text().map(|t| t.chars().take(1500).collect::<String>()));
    }
    if std::env::var("DUMP").is_ok() { for (i, r) in fake.requests().iter().enumerate() { std::fs::write(format!("/tmp/explore-req-{i}.json"), serde_json::to_string_pretty(&r.body).unwrap()).unwrap(); } }
    println!("HOME files:");
    for e in walk(home.path()) { println!("  {e}"); }
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(p) { for e in rd.flatten() { let path = e.path(); v.push(path.display().to_string()); if path.is_dir() { v.extend(walk(&path)); } } }
    v
}
