//! Cluster health: the members as the leader sees them (each one's role, how far
//! behind the leader's log it is, when it last answered, whether it is healthy), the
//! leader and term, this node's own indexes and feature levels, and the free space
//! of its data directory against the floor below which it refuses mail. Without a
//! leader, the page says so and shows this node's own view.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bulwark_consensus::ClusterStatus;
use maud::html;

use super::layout::{page, size, Section};
use super::{forbidden, PageError, Viewer};
use crate::auth::Access;
use crate::routes::ApiState;

/// How long the leader's view may take before the page shows this node's own.
const LEADER_VIEW: Duration = Duration::from_secs(2);

/// `GET /ui/cluster`.
pub(crate) async fn show(State(s): State<ApiState>, viewer: Viewer) -> Result<Response, PageError> {
    if !Access::Status.allows(viewer.caller().role) {
        return Err(forbidden(&viewer, "read the cluster's health").into());
    }
    let local = s.node.status();
    let leader = s.node.leader_status(LEADER_VIEW).await;
    let (free, floor) = (s.disk_free)();
    let (level, cluster_level) = (s.node.feature_level(), s.node.cluster_feature_level());
    let view: &ClusterStatus = leader.as_ref().unwrap_or(&local);
    let body = html! {
        h1 { "Cluster" }
        @match (&leader, local.leader_id) {
            (Ok(l), _) => p.notice role="status" {
                "Node " (l.node_id) " leads, term " (l.term) "; " (healthy(l)) " of "
                (l.members.len()) " members answer it."
            },
            (Err(e), Some(id)) => p.problem role="status" {
                "Node " (id) " leads, but its view did not come: " (e.to_string())
            },
            (Err(_), None) => p.problem role="status" {
                "No leader: the cluster takes no mail until a majority of its voters elect one."
            },
        }
        div.table-wrap { table {
            thead { tr {
                th.num { "Node" } th { "Address" } th { "Role" } th { "Health" }
                th.num { "Behind (entries)" } th.num { "Last answer" } th.num.wide { "Replicated to" }
            } }
            tbody {
                @for m in &view.members {
                    tr {
                        td.num { (m.id) @if m.id == local.node_id { span.muted { " (this)" } } }
                        td.addr { @if m.addr.is_empty() { span.muted { "—" } } @else { (m.addr) } }
                        td {
                            @if Some(m.id) == view.leader_id { span.badge.pass { "leader" } }
                            @else if m.voter { "voter" } @else { "learner" }
                        }
                        td {
                            @match m.healthy {
                                Some(true) => span.badge.pass { "healthy" },
                                Some(false) => span.badge.fail { "not answering" },
                                None => span.muted { "unknown" },
                            }
                        }
                        td.num { @match m.lag { Some(lag) => (lag), None => span.muted { "—" } } }
                        td.num { @match m.last_contact_ms { Some(ms) => { (ms) " ms ago" }, None => span.muted { "—" } } }
                        td.num.wide { @match m.matched_index { Some(i) => (i), None => span.muted { "—" } } }
                    }
                }
            }
        } }
        section.card {
            h2 { "This node (" (local.node_id) ")" }
            dl.facts {
                dt { "Raft state" } dd { (local.state) ", term " (local.term) }
                dt { "Log" } dd {
                    "last " (opt(local.last_log_index)) ", committed " (opt(local.commit_index))
                    ", applied " (opt(local.applied_index)) ", snapshot " (opt(local.snapshot_index))
                }
                dt { "Audit trail" } dd { (local.event_count) " events, head " code { (local.chain_head) } }
                dt { "Feature level" } dd { "this build " (level) ", the cluster's " (cluster_level) }
                dt { "Disk" } dd {
                    (size(free)) " free"
                    @if free < floor {
                        " " span.badge.fail { "below the floor of " (size(floor)) ": refusing mail" }
                    } @else {
                        span.muted { " (mail is refused below " (size(floor)) ")" }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Cluster", Section::Cluster, body).into_response())
}

fn healthy(status: &ClusterStatus) -> usize {
    status
        .members
        .iter()
        .filter(|m| m.healthy == Some(true))
        .count()
}

fn opt(index: Option<u64>) -> String {
    index.map_or_else(|| "—".into(), |i| i.to_string())
}
