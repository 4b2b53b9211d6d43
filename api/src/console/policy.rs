//! The cluster's policy in the console (`/ui/policy`): the current version (or an
//! earlier one) whole, every version with who made it, when, why and what it changed,
//! and an edit of the policy tried on the decisions on record (what if) before it is
//! applied. What-if and apply are the API's own (`POST /v1/policy/simulate`, `PUT
//! /v1/policy`): checked whole, made from the version shown (a change made meanwhile
//! by someone else is refused, not overwritten), operators changing the allow and
//! block lists only, recorded as `policy.changed` under the person's name.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use bulwark_storage::policy::PolicyVersion;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{page, time, Section};
use super::{day_ms, forbidden, see_other, PageError, Viewer};
use crate::auth::Access;
use crate::policy::{Applied, Refused};
use crate::routes::ApiState;
use crate::ApiError;

/// Longest reason given with a change, as the API takes it.
const MAX_REASON: usize = 1024;

#[derive(Default, Deserialize)]
#[serde(default)]
pub(crate) struct Shown {
    /// An earlier version (default: the current one).
    version: Option<u64>,
    /// The version just applied, to say so.
    applied: Option<u64>,
}

/// Every version, oldest first, read once.
async fn versions(s: &ApiState) -> Result<Vec<PolicyVersion>, ApiError> {
    let node = s.node.clone();
    tokio::task::spawn_blocking(move || node.state().policy_versions())
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// `GET /ui/policy?version=N`: a version whole, the form to try and apply a change,
/// and the history.
pub(crate) async fn show(
    State(s): State<ApiState>,
    viewer: Viewer,
    query: Result<Query<Shown>, QueryRejection>,
) -> Result<Response, PageError> {
    if !Access::Policy.allows(viewer.caller().role) {
        return Err(forbidden(&viewer, "read the policy").into());
    }
    let Query(shown) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let all = versions(&s).await?;
    let notice = shown.applied.map(
        |v| html! { p.notice role="status" { "Version " (v) " is the cluster's policy now." } },
    );
    Ok(render(&s, &viewer, &all, shown.version, None, notice, None)?.into_response())
}

/// The page: version `wanted` (default the current), the edit form holding `draft`
/// (default the version's own text), a notice, and what a what-if found.
fn render(
    s: &ApiState,
    viewer: &Viewer,
    all: &[PolicyVersion],
    wanted: Option<u64>,
    draft: Option<&str>,
    notice: Option<Markup>,
    outcome: Option<Markup>,
) -> Result<Markup, ApiError> {
    let current = all.last();
    let version = match wanted {
        Some(v) => all
            .iter()
            .find(|p| p.version == v)
            .ok_or_else(|| ApiError::not_found(format!("no policy version {v}")))?,
        None => current.ok_or_else(|| ApiError::not_found("the cluster has no policy yet"))?,
    };
    let pretty = serde_json::from_str::<Value>(&version.document)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map_err(ApiError::internal)?;
    let is_current = current.is_some_and(|c| c.version == version.version);
    let may_try = Access::Messages.allows(viewer.caller().role);
    let may_change = Access::PolicyChange.allows(viewer.caller().role);
    let base = current.map_or(0, |c| c.version);
    let body = html! {
        h1 { "Policy" }
        @if let Some(notice) = notice { (notice) }
        (outcome.unwrap_or_default())
        p.lead {
            "Version " strong { (version.version) }
            @if is_current { " (the cluster's policy; this node judges by version " (s.policy.judging()) ")" }
            @else { " (an earlier version; " a href="/ui/policy" { "the current one" } ")" }
            ", made " (time(version.time_ms)) " UTC by " (version.user)
            @if !version.reason.is_empty() { ": " (version.reason) }
        }
        @if may_try && is_current {
            form.card method="post" action="/ui/policy/try" {
                input type="hidden" name="csrf" value=(viewer.csrf);
                input type="hidden" name="base" value=(base);
                label for="policy" { "The policy (JSON: the [policy] keys)" }
                textarea.policy id="policy" name="policy" rows="18" spellcheck="false" {
                    (draft.unwrap_or(&pretty))
                }
                div.fields {
                    label { "What if, from (day)" input type="date" name="since"; }
                    label { "until (day, included)" input type="date" name="until"; }
                    @if may_change {
                        label { "Why (recorded with the change)"
                            input type="text" name="reason" maxlength=(MAX_REASON);
                        }
                    }
                }
                div.actions-row {
                    button type="submit" name="do" value="try" { "What if" }
                    @if may_change {
                        button.primary type="submit" name="do" value="apply" { "Apply" }
                    }
                }
                p.hint { "What if decides the decisions on record again with this policy, from what was recorded with them (no rescan). Apply makes it the cluster's next version, made from version " (base) "." }
            }
        } @else {
            pre.body { (pretty) }
        }
        h2 { "History" }
        div.table-wrap {
            table {
                thead { tr { th { "Version" } th { "Made" } th { "By" } th { "Why" } th { "What changed" } } }
                tbody {
                    @for v in all.iter().rev() {
                        tr {
                            td { a href={"/ui/policy?version=" (v.version)} { (v.version) } }
                            td { (time(v.time_ms)) }
                            td.addr { (v.user) }
                            td { (v.reason) }
                            td {
                                @if v.diff.is_empty() { span.muted { "(first version)" } }
                                @for line in &v.diff { code { (line) } br; }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(viewer, "Policy", Section::Policy, body))
}

/// What a what-if found, as a person reads it.
fn simulation(answer: &Value) -> Markup {
    let count = |key: &str| answer[key].as_u64().unwrap_or(0);
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    let rescan: Vec<&str> = answer["needs_rescan"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    html! {
        section.card {
            h2 { "What if" }
            p {
                (count("judged")) " decisions tried: " strong { (count("changed")) " would change" }
                ", " (count("unchanged")) " would not."
                @if answer["next"].is_u64() { " (Stopped early: a long range is tried a part at a time; narrow the days to see the rest.)" }
            }
            @if !changes.is_empty() {
                table {
                    thead { tr { th { "On record" } th { "With this policy" } th.num { "Messages" } th { "For example" } } }
                    tbody {
                        @for c in &changes {
                            tr {
                                td { span class={"badge " (c["from"].as_str().unwrap_or(""))} { (c["from"].as_str().unwrap_or("")) } }
                                td { span class={"badge " (c["to"].as_str().unwrap_or(""))} { (c["to"].as_str().unwrap_or("")) } }
                                td.num { (c["count"].as_u64().unwrap_or(0)) }
                                td {
                                    @for id in c["examples"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                                        a.mono href={"/ui/messages/" (id)} { (id) } " "
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if !rescan.is_empty() {
                p.problem { "Changed keys a what-if cannot decide without scanning the messages again: " (rescan.join(", ")) }
            }
        }
    }
}

/// `POST /ui/policy/try` (`csrf`, `policy`, `base`, `since`, `until`, `reason`, `do` =
/// try or apply): the edited policy tried on the decisions on record, or applied.
pub(crate) async fn act(
    State(s): State<ApiState>,
    viewer: Viewer,
    body: Bytes,
) -> Result<Response, PageError> {
    let form = viewer.form(&body)?;
    let role = viewer.caller().role;
    let applying = form.get("do") == Some("apply");
    if !Access::Messages.allows(role) || (applying && !Access::PolicyChange.allows(role)) {
        let what = if applying {
            "change the policy"
        } else {
            "try a policy on the decisions on record"
        };
        return Err(forbidden(&viewer, what).into());
    }
    let draft = form.get("policy").unwrap_or("").to_string();
    let all = versions(&s).await?;
    let problem = |text: String| html! { p.problem role="alert" { (text) } };
    let proposed: Value = match serde_json::from_str(&draft) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => {
            let notice = problem("The policy must be a JSON object of the [policy] keys.".into());
            return Ok(
                render(&s, &viewer, &all, None, Some(&draft), Some(notice), None)?.into_response(),
            );
        }
        Err(e) => {
            let notice = problem(format!("The policy is not JSON: {e}."));
            return Ok(
                render(&s, &viewer, &all, None, Some(&draft), Some(notice), None)?.into_response(),
            );
        }
    };
    if applying {
        let reason = form.get("reason").unwrap_or("").trim().to_string();
        if reason.len() > MAX_REASON {
            return Err(
                ApiError::bad_request(format!("reason: at most {MAX_REASON} bytes")).into(),
            );
        }
        let base = form
            .get("base")
            .and_then(|b| b.parse::<u64>().ok())
            .ok_or_else(|| ApiError::bad_request("base: the version the change was made from"))?;
        let caller = viewer.caller().clone();
        return match crate::policy::apply(&s, caller, viewer.client_ip, base, &proposed, reason)
            .await
        {
            Ok(Applied::Changed { version, .. } | Applied::Unchanged { version }) => {
                Ok(see_other(&format!("/ui/policy?applied={version}")))
            }
            Err(Refused::Invalid(problems)) => {
                let notice = html! {
                    div.problem role="alert" {
                        "Not applied: the policy does not validate."
                        ul { @for p in &problems { li { (p) } } }
                    }
                };
                Ok(
                    render(&s, &viewer, &all, None, Some(&draft), Some(notice), None)?
                        .into_response(),
                )
            }
            Err(Refused::Api(e)) => {
                let notice = problem(format!("Not applied: {}", e.detail));
                Ok(
                    render(&s, &viewer, &all, None, Some(&draft), Some(notice), None)?
                        .into_response(),
                )
            }
        };
    }
    let since_ms = day_ms("since", form.get("since").unwrap_or(""), 0)?;
    let until_ms = day_ms("until", form.get("until").unwrap_or(""), 1)?;
    let node = s.node.clone();
    let engine = s.policy.clone();
    let answer = tokio::task::spawn_blocking(move || {
        engine.simulate(&node.state(), &proposed, since_ms, until_ms, 0)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::from)?;
    let (notice, outcome) = match answer {
        Ok(answer) => (None, Some(simulation(&answer))),
        Err(problems) => (
            Some(html! {
                div.problem role="alert" {
                    "The policy does not validate."
                    ul { @for p in &problems { li { (p) } } }
                }
            }),
            None,
        ),
    };
    Ok(render(&s, &viewer, &all, None, Some(&draft), notice, outcome)?.into_response())
}
