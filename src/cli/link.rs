//! `portal-bot link [--check] ENDUSER`: the on-call engineer's way in when chat is down.
//! Prints only the URL on stdout (so `open "$(portal-bot link x)"` works); everything else goes
//! to stderr; the exit status says what happened.

use std::path::Path;

use super::exit;
use crate::core::asker::Asker;
use crate::core::command::Command;
use crate::core::enduser::{parse_target, Target};
use crate::core::portal::{Refusal, Reply};
use crate::App;

pub async fn run(path: &Path, check: bool, enduser: &str) -> u8 {
    let config = match super::load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(code) = super::need_token(&config) {
        return code;
    }
    super::say_where(path, &config);
    // A terminal gets the signed URL itself: a /go/ id would live in this short-lived
    // process's memory and be dead by the time a browser asked the server for it.
    let mut config = config;
    config.server.public_url = None;
    // Appends its one line to the trail but leaves rotating it to the server: two processes
    // renaming and deleting the same files could drop lines the other still writes.
    config.audit.rotate = None;
    let app = match App::build(config) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("portal-bot: {e}");
            return exit::USAGE;
        }
    };
    let command = match parse_target(enduser) {
        Ok(Target::Help) => Ok(Command::Help),
        Ok(t) if check => Ok(Command::Check(t)),
        Ok(t) => Ok(Command::Link(t)),
        Err(e) => Err(e),
    };
    let reply = app
        .portal
        .handle_command(&Asker::local_user(), command)
        .await;
    app.audit.close().await;
    report(reply)
}

fn report(reply: Reply) -> u8 {
    match reply {
        Reply::Help => {
            eprintln!(
                "usage: portal-bot link [--check] ENDUSER   (a Planhat end-user id or email)"
            );
            exit::USAGE
        }
        Reply::Link(link) => {
            if let Some(who) = &link.who {
                eprintln!("{}", who_line(who.name.as_deref(), who.company.as_deref()));
            }
            let secs = link
                .expires_at
                .duration_since(std::time::SystemTime::now())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            eprintln!(
                "link for {} (works for {secs} s; it logs you in as the customer):",
                link.end_user
            );
            println!("{}", link.url.expose());
            exit::OK
        }
        Reply::Access {
            end_user,
            who,
            has_access,
            // The terminal is an admin: no scope applies.
            scope: _,
        } => {
            if let Some(who) = &who {
                eprintln!("{}", who_line(who.name.as_deref(), who.company.as_deref()));
            }
            if has_access {
                println!("{end_user}: has portal access");
                exit::OK
            } else {
                println!("{end_user}: no portal access");
                exit::NO_ACCESS
            }
        }
        Reply::Choose {
            query,
            matches,
            more,
        } => {
            eprintln!("{query} matches several end users; run again with one of these ids:");
            for m in &matches {
                eprintln!("  {}  {}", m.id, m.label());
            }
            if more {
                eprintln!("  (more not shown)");
            }
            exit::USAGE
        }
        Reply::AskOwner { .. } => {
            eprintln!("{}", crate::core::ownership::ScopeDenied::NotYours);
            exit::USAGE
        }
        Reply::Refused(r) => {
            match &r {
                Refusal::BadInput(bad) => eprintln!("portal-bot: not an end-user id: {bad}"),
                other => eprintln!("portal-bot: {other}"),
            }
            match r {
                Refusal::BadInput(_) | Refusal::NotAllowed(_) | Refusal::RateLimited(_) => {
                    exit::USAGE
                }
                Refusal::NoAccess => exit::NO_ACCESS,
                Refusal::NotFound => exit::NOT_FOUND,
                _ => exit::UPSTREAM,
            }
        }
    }
}

fn who_line(name: Option<&str>, company: Option<&str>) -> String {
    match (name, company) {
        (Some(n), Some(c)) => format!("{n} ({c})"),
        (Some(n), None) => n.to_string(),
        (None, Some(c)) => format!("({c})"),
        (None, None) => String::new(),
    }
}
