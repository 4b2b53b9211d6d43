//! `bulwark cluster`: the cluster's membership over any node's API, with the admin
//! token: its status, and a node added (as a learner, waited for until it has caught
//! up), promoted to voter, replaced or removed. Every change is judged first on the
//! leader's view (`GET /v1/cluster?view=leader`: who votes, who answers the leader,
//! how far behind each is), and one that would leave the voters unable to commit, or
//! take away the only failure the cluster could survive, is refused here unless
//! `--force`; the leader still refuses what Raft cannot do (the last voter, a learner
//! far behind). Exit status: 0 done, 1 refused by the cluster (an unknown node, a
//! member twice, a malformed address), 2 not carried out (no answer, a token not
//! taken, no leader, not caught up in time), 3 refused here as unsafe.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bulwark_consensus::PROMOTE_MAX_LAG;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::admin::{self, Answer, Table};
use super::remote::{ApiArgs, Remote};

/// One API call: a membership change may wait for the leader up to 30 s.
const TIMEOUT: Duration = Duration::from_secs(60);
/// How often the leader's view is read again while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How often a progress line is printed at most while waiting.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long a judged-unsafe change waits before the view is read once more: right
/// after an election the new leader has not yet heard from every member.
const RECHECK: Duration = Duration::from_secs(1);

#[derive(clap::Subcommand)]
pub enum Command {
    /// The members (voters and learners), the leader and its term, and for each
    /// member its cluster address, how far it is replicated and whether it answers
    /// the leader; a table, or JSON with --json. Exit 0 when it could be read.
    Status {
        #[command(flatten)]
        api: ApiArgs,
        /// JSON for scripts: the view, the quorum and the failures it survives.
        #[arg(long)]
        json: bool,
    },
    /// Add a node as a learner (it receives the log but does not vote) and wait
    /// until it has caught up, showing its progress. Start it first, with the
    /// cluster's CA and a certificate of its own, its peers the current members. Run
    /// again for a learner already added at ADDR: it waits again.
    Add {
        #[command(flatten)]
        api: ApiArgs,
        /// The new node's id (`[node] id` in its config).
        #[arg(long)]
        id: u64,
        /// Its cluster listener as the others reach it, `host:port`.
        #[arg(long)]
        addr: String,
        /// Return once it is added, without waiting for it to catch up.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for it to catch up.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Make a learner a voter. Refused while it is behind the leader or does not
    /// answer it, or when it would take away the only failure the cluster survives.
    Promote {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        id: u64,
        /// Ask the leader even so (it still refuses a learner far behind).
        #[arg(long)]
        force: bool,
    },
    /// Replace a voter by a new node, in the safe order: add the new one as a
    /// learner, wait until it has caught up, promote it, then remove the old one. Run
    /// again after an interruption: the steps already done are skipped.
    Replace {
        #[command(flatten)]
        api: ApiArgs,
        /// The member leaving.
        #[arg(long)]
        old: u64,
        /// The node taking its place (started as for `add`).
        #[arg(long)]
        new: u64,
        /// The new node's cluster listener, `host:port`.
        #[arg(long)]
        addr: String,
        /// Do it even where it is judged unsafe.
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the new node to catch up.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Remove a member. A voter is refused when the voters left that answer the
    /// leader would not be a majority, when it would leave the cluster unable to
    /// survive any failure, or when it leads.
    Remove {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        id: u64,
        /// Remove it even so (the leader still refuses the last voter).
        #[arg(long)]
        force: bool,
    },
}

/// How a cluster command went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The cluster refused it (said on stderr).
    Refused,
    /// Refused here as unsafe (said on stderr); `--force` does it.
    Unsafe,
}

/// One member as the API shows it (health and lag: in the leader's view only).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    #[serde(default)]
    pub matched_index: Option<u64>,
    #[serde(default)]
    pub lag: Option<u64>,
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
    #[serde(default)]
    pub healthy: Option<bool>,
}

/// The cluster as a node shows it (`GET /v1/cluster`).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct View {
    pub node_id: u64,
    pub state: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub commit_index: Option<u64>,
    pub members: Vec<Member>,
    /// The cluster's active feature level as the answering node applied it (absent
    /// from a release before feature levels: 0).
    #[serde(default)]
    pub cluster_feature_level: u32,
}

impl View {
    /// Whether this is the leader's view, the one with each member's health.
    pub fn is_leaders(&self) -> bool {
        self.leader_id == Some(self.node_id)
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn ids(&self) -> String {
        let ids: Vec<String> = self.members.iter().map(|m| m.id.to_string()).collect();
        ids.join(", ")
    }
}

/// What a set of voters can do: the majority it needs, how many of them answer the
/// leader, and how many more could fail before commits stop (negative: they have).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quorum {
    pub voters: usize,
    pub majority: usize,
    pub healthy: usize,
    pub tolerates: i64,
}

impl Quorum {
    /// Of `voters`, each healthy or not.
    pub fn of(voters: impl IntoIterator<Item = bool>) -> Quorum {
        let (mut count, mut healthy) = (0, 0);
        for up in voters {
            count += 1;
            healthy += usize::from(up);
        }
        let majority = count / 2 + 1;
        Quorum {
            voters: count,
            majority,
            healthy,
            tolerates: healthy as i64 - majority as i64,
        }
    }
}

/// The quorum of `view`'s voters, with `change` applied: a member added as a
/// healthy voter, or taken out.
fn quorum_after(view: &View, add: Option<u64>, remove: Option<u64>) -> Quorum {
    let mut voters: Vec<(u64, bool)> = view
        .members
        .iter()
        .filter(|m| (m.voter || Some(m.id) == add) && Some(m.id) != remove)
        .map(|m| (m.id, m.healthy == Some(true)))
        .collect();
    if let Some(add) = add.filter(|id| view.member(*id).is_none()) {
        voters.push((add, true));
    }
    Quorum::of(voters.into_iter().map(|(_, up)| up))
}

/// A rule's answer about a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Safe,
    /// The cluster would refuse it anyway (not a member, already one...): why.
    Refused(String),
    /// It may lose the quorum or leave the cluster one failure from a stall: why.
    Unsafe(String),
}

/// The voters of `view` that do not answer the leader (or whose health is unknown),
/// for messages: `3, 4`, or `none`.
fn down_voters(view: &View) -> String {
    let down: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.voter && m.healthy != Some(true))
        .map(|m| m.id.to_string())
        .collect();
    match down.is_empty() {
        true => "none".into(),
        false => down.join(", "),
    }
}

/// Removing member `id`, judged on the leader's view.
pub fn judge_remove(view: &View, id: u64) -> Verdict {
    let Some(member) = view.member(id) else {
        return Verdict::Refused(format!(
            "node {id} is not a member (members: {})",
            view.ids()
        ));
    };
    if !member.voter {
        return Verdict::Safe;
    }
    let now = quorum_after(view, None, None);
    let after = quorum_after(view, None, Some(id));
    if after.voters == 0 {
        return Verdict::Refused(format!("node {id} is the only voter"));
    }
    let down = down_voters(view);
    if let Some(why) = no_quorum(view, now) {
        return Verdict::Unsafe(why);
    }
    if after.tolerates < 0 {
        return Verdict::Unsafe(format!(
            "removing voter {id} would leave {} of {} voters answering the leader, and {} \
             are needed to commit (not answering: {down}): the cluster would stop \
             accepting mail. Bring the others back first",
            after.healthy, after.voters, after.majority
        ));
    }
    if after.tolerates == 0 && now.tolerates > 0 {
        return Verdict::Unsafe(format!(
            "removing voter {id} would leave {} voters of which every one is needed to \
             commit: the cluster survives one failure now, none after. Add a node first \
             (`bulwark cluster replace --old {id} --new N --addr HOST:PORT`)",
            after.voters
        ));
    }
    if view.leader_id == Some(id) {
        return Verdict::Unsafe(format!(
            "node {id} leads: removed, it steps down and the others elect a leader only \
             after an election timeout, while mail is answered 451. Stop it first \
             (SIGTERM: it hands its leadership over), then remove it"
        ));
    }
    Verdict::Safe
}

/// Promoting learner `id`, judged on the leader's view.
pub fn judge_promote(view: &View, id: u64) -> Verdict {
    let Some(member) = view.member(id) else {
        return Verdict::Refused(format!(
            "node {id} is not a member (members: {}): add it first",
            view.ids()
        ));
    };
    if member.voter {
        return Verdict::Refused(format!("node {id} is already a voter"));
    }
    if member.healthy != Some(true) {
        return Verdict::Unsafe(format!(
            "learner {id} does not answer the leader ({}): as a voter it would count \
             toward the majority without voting",
            contact(member)
        ));
    }
    match member.lag {
        Some(lag) if lag <= PROMOTE_MAX_LAG => {}
        lag => {
            return Verdict::Unsafe(format!(
                "learner {id} is {} entries behind the leader (at most {PROMOTE_MAX_LAG} \
                 to be promoted): wait until `bulwark cluster status` shows its lag near 0",
                lag.map_or_else(|| "an unknown number of".into(), |l| l.to_string())
            ))
        }
    }
    let now = quorum_after(view, None, None);
    let after = quorum_after(view, Some(id), None);
    if let Some(why) = no_quorum(view, now) {
        return Verdict::Unsafe(why);
    }
    if after.tolerates < 0 {
        return Verdict::Unsafe(format!(
            "with voters {} not answering, {} voters would need {} to commit and only {} \
             answer",
            down_voters(view),
            after.voters,
            after.majority,
            after.healthy
        ));
    }
    Verdict::Safe
}

/// Why no change can commit now, if so: a change of membership is committed by a
/// majority of the current voters too, and they are not there.
fn no_quorum(view: &View, now: Quorum) -> Option<String> {
    (now.tolerates < 0).then(|| {
        format!(
            "only {} of {} voters answer the leader (not answering: {}) and {} are needed: \
             no change of membership can commit until they are back",
            now.healthy,
            now.voters,
            down_voters(view),
            now.majority
        )
    })
}

/// When `member` last answered the leader, for messages and the table.
fn contact(member: &Member) -> String {
    match (member.healthy, member.last_contact_ms) {
        (None, _) => "health unknown".into(),
        (_, None) => "never heard from".into(),
        (_, Some(ms)) => format!("last answered {:.1} s ago", ms as f64 / 1000.0),
    }
}

/// Runs `command`.
pub fn run(command: &Command) -> Result<Outcome> {
    match command {
        Command::Status { api, json } => status(&Remote::new(api, TIMEOUT)?, *json),
        Command::Add {
            api,
            id,
            addr,
            no_wait,
            timeout,
        } => {
            let remote = Remote::new(api, TIMEOUT)?;
            let view = leader_view(&remote)?;
            match view.member(*id) {
                // Run again (after an interruption): wait for it as the first run would.
                Some(member) if !member.voter && member.addr == *addr => {
                    eprintln!("node {id} is already a learner at {addr}")
                }
                Some(member) => {
                    return refused(&format!(
                        "node {id} is already a member ({}, {})",
                        role(&view, member),
                        member.addr
                    ))
                }
                None => {
                    if let Some(outcome) = add(&remote, *id, addr)? {
                        return Ok(outcome);
                    }
                    eprintln!("node {id} added as a learner at {addr}");
                }
            }
            if *no_wait {
                return Ok(Outcome::Done);
            }
            catch_up(&remote, *id, Duration::from_secs(*timeout))?;
            eprintln!(
                "node {id} has caught up: promote it with `bulwark cluster promote --id {id}`"
            );
            Ok(Outcome::Done)
        }
        Command::Promote { api, id, force } => {
            let remote = Remote::new(api, TIMEOUT)?;
            if let Some(outcome) = judged(&remote, *force, |view| judge_promote(view, *id))? {
                return Ok(outcome);
            }
            change(
                &remote,
                Method::POST,
                &format!("/v1/cluster/members/{id}/promote"),
            )
        }
        Command::Remove { api, id, force } => {
            let remote = Remote::new(api, TIMEOUT)?;
            if let Some(outcome) = judged(&remote, *force, |view| judge_remove(view, *id))? {
                return Ok(outcome);
            }
            change(
                &remote,
                Method::DELETE,
                &format!("/v1/cluster/members/{id}"),
            )
        }
        Command::Replace {
            api,
            old,
            new,
            addr,
            force,
            timeout,
        } => replace(
            &Remote::new(api, TIMEOUT)?,
            *old,
            *new,
            addr,
            *force,
            Duration::from_secs(*timeout),
        ),
    }
}

/// Says why the cluster would refuse: exit 1.
fn refused(why: &str) -> Result<Outcome> {
    eprintln!("bulwark: {why}");
    Ok(Outcome::Refused)
}

/// The leader's view, asked of any node; an error when no leader answers.
fn leader_view(remote: &Remote) -> Result<View> {
    match admin::ask(
        remote,
        Method::GET,
        "/v1/cluster",
        &[("view", "leader")],
        None,
    )? {
        Answer::Done(view) => {
            serde_json::from_value(view).context("the node's answer is not the cluster's view")
        }
        Answer::Refused(status, why) => bail!(
            "no leader's view of the cluster ({status}: {why}): without a leader no \
             membership change can commit; `bulwark cluster status` shows what this node sees"
        ),
    }
}

/// Judges a change on the leader's view: `None` when it may go on (safe, or forced
/// with the reason said), else how the command ends. An unsafe verdict is judged
/// once more on a fresh view a moment later: a new leader may not have heard from
/// every member yet.
fn judged(
    remote: &Remote,
    force: bool,
    judge: impl Fn(&View) -> Verdict,
) -> Result<Option<Outcome>> {
    let mut verdict = judge(&leader_view(remote)?);
    if matches!(verdict, Verdict::Unsafe(_)) {
        std::thread::sleep(RECHECK);
        verdict = judge(&leader_view(remote)?);
    }
    match verdict {
        Verdict::Safe => Ok(None),
        Verdict::Refused(why) => refused(&why).map(Some),
        Verdict::Unsafe(why) if force => {
            eprintln!("bulwark: --force: {why}");
            Ok(None)
        }
        Verdict::Unsafe(why) => {
            eprintln!("bulwark: refused: {why}. (--force does it anyway.)");
            Ok(Some(Outcome::Unsafe))
        }
    }
}

/// Makes a membership change; says what was done, or why the cluster refused.
fn change(remote: &Remote, method: Method, path: &str) -> Result<Outcome> {
    match admin::ask(remote, method, path, &[], None)? {
        Answer::Done(made) => {
            println!(
                "{} of node {}: done at log index {}",
                admin::text(&made["action"]),
                admin::text(&made["member"]),
                admin::text(&made["log_index"])
            );
            Ok(Outcome::Done)
        }
        Answer::Refused(status, why) => refused_or_failed(status, &why),
    }
}

/// A refusal is exit 1; a 5xx (no leader answered: not known to be done) an error.
fn refused_or_failed(status: StatusCode, why: &str) -> Result<Outcome> {
    if status.is_server_error() {
        bail!("the node answered {status}: {why} (not known to be done: see `bulwark cluster status`, then try again)");
    }
    refused(&format!("the cluster refused ({status}): {why}"))
}

/// Adds `id` at `addr` as a learner: `None` when done, else how the command ends.
fn add(remote: &Remote, id: u64, addr: &str) -> Result<Option<Outcome>> {
    let body = json!({ "id": id, "addr": addr });
    match admin::ask(
        remote,
        Method::POST,
        "/v1/cluster/members",
        &[],
        Some(&body),
    )? {
        Answer::Done(_) => Ok(None),
        Answer::Refused(status, why) => refused_or_failed(status, &why).map(Some),
    }
}

/// Waits until learner `id` answers the leader and is at most [`PROMOTE_MAX_LAG`]
/// entries behind, saying how far it has come; an error after `timeout`.
fn catch_up(remote: &Remote, id: u64, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut said: Option<Instant> = None;
    loop {
        let view = leader_view(remote)?;
        let Some(member) = view.member(id) else {
            bail!("node {id} is no longer a member");
        };
        let behind = member.lag.map_or_else(|| "?".into(), |l| l.to_string());
        if member.healthy == Some(true) && member.lag.is_some_and(|l| l <= PROMOTE_MAX_LAG) {
            return Ok(());
        }
        if said.is_none_or(|s| s.elapsed() >= PROGRESS_EVERY) {
            eprintln!(
                "node {id}: {} entries behind the leader, at index {} ({}), {} s",
                behind,
                member
                    .matched_index
                    .map_or_else(|| "-".into(), |i| i.to_string()),
                contact(member),
                started.elapsed().as_secs()
            );
            said = Some(Instant::now());
        }
        if started.elapsed() >= timeout {
            bail!(
                "node {id} has not caught up within {} s ({}, {behind} entries behind): it \
                 stays a learner. Check that it runs, that {} reaches it and its \
                 certificate is from the cluster's CA; its log says why",
                timeout.as_secs(),
                contact(member),
                member.addr
            );
        }
        std::thread::sleep(POLL);
    }
}

/// `bulwark cluster replace`: `new` added, caught up, promoted, then `old` removed,
/// each step skipped when already done. Everything judged before the first step, so
/// that an unsafe replacement changes nothing.
fn replace(
    remote: &Remote,
    old: u64,
    new: u64,
    addr: &str,
    force: bool,
    timeout: Duration,
) -> Result<Outcome> {
    if old == new {
        return refused(&format!("--old and --new are both {old}"));
    }
    let view = leader_view(remote)?;
    if view.member(old).is_none() {
        return refused(&format!(
            "node {old} is not a member (members: {})",
            view.ids()
        ));
    }
    if let Some(member) = view.member(new).filter(|m| m.addr != addr) {
        return refused(&format!(
            "node {new} is already a member at {}, not {addr}",
            member.addr
        ));
    }
    // The end state judged now, so that nothing is changed if it is unsafe.
    let end = |view: &View| judge_remove(&with_voter(view, new, addr), old);
    if let Some(outcome) = judged(remote, force, end)? {
        return Ok(outcome);
    }
    let step = |n: u8, what: String| eprintln!("step {n}/4: {what}");
    match view.member(new) {
        None => {
            step(1, format!("adding node {new} at {addr} as a learner"));
            if let Some(outcome) = add(remote, new, addr)? {
                return Ok(outcome);
            }
        }
        Some(_) => step(1, format!("node {new} is already a member")),
    }
    let voter = view.member(new).is_some_and(|m| m.voter);
    if voter {
        step(2, format!("node {new} is already a voter"));
        step(3, format!("node {new} is already a voter"));
    } else {
        step(2, format!("waiting for node {new} to catch up"));
        catch_up(remote, new, timeout)?;
        step(3, format!("promoting node {new}"));
        if let Some(outcome) = promote_caught_up(remote, new, timeout)? {
            return Ok(outcome);
        }
    }
    step(4, format!("removing node {old}"));
    if !force {
        // Judged again on the view as it now is: a voter may have failed meanwhile.
        if let Some(outcome) = judged(remote, false, |view| judge_remove(view, old))? {
            eprintln!(
                "bulwark: node {new} is a voter and node {old} still one; remove it with \
                 `bulwark cluster remove --id {old}` once that is safe"
            );
            return Ok(outcome);
        }
    }
    change(
        remote,
        Method::DELETE,
        &format!("/v1/cluster/members/{old}"),
    )
}

/// `view` with `id` (at `addr`) as a voter that answers the leader.
fn with_voter(view: &View, id: u64, addr: &str) -> View {
    let mut view = view.clone();
    match view.members.iter_mut().find(|m| m.id == id) {
        Some(m) => {
            m.voter = true;
            m.healthy = Some(true);
        }
        None => view.members.push(Member {
            id,
            addr: addr.to_string(),
            voter: true,
            matched_index: None,
            lag: Some(0),
            last_contact_ms: Some(0),
            healthy: Some(true),
        }),
    }
    view
}

/// Promotes `id`, which has caught up; the leader refuses while it is behind, which
/// it may be again under load: asked again until `timeout`. `None` when done.
fn promote_caught_up(remote: &Remote, id: u64, timeout: Duration) -> Result<Option<Outcome>> {
    let started = Instant::now();
    let path = format!("/v1/cluster/members/{id}/promote");
    loop {
        match admin::ask(remote, Method::POST, &path, &[], None)? {
            Answer::Done(_) => return Ok(None),
            Answer::Refused(StatusCode::CONFLICT, why)
                if why.contains("behind") && started.elapsed() < timeout =>
            {
                std::thread::sleep(POLL)
            }
            Answer::Refused(status, why) => return refused_or_failed(status, &why).map(Some),
        }
    }
}

/// `bulwark cluster status`: the leader's view, else (no leader) the node's own.
fn status(remote: &Remote, json: bool) -> Result<Outcome> {
    let (view, why_local) = match leader_view(remote) {
        Ok(view) => (view, None),
        Err(e) => {
            let view = match admin::ask(remote, Method::GET, "/v1/cluster", &[], None)? {
                Answer::Done(view) => serde_json::from_value::<View>(view)
                    .context("the node's answer is not the cluster's view")?,
                Answer::Refused(status, why) => bail!("the node answered {status}: {why}"),
            };
            (view, Some(format!("{e:#}")))
        }
    };
    let quorum = view.is_leaders().then(|| quorum_after(&view, None, None));
    if json {
        let out = json!({
            "view": if view.is_leaders() { "leader" } else { "local" },
            "quorum": quorum,
            "cluster": view,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", describe(&view, quorum));
    }
    if let Some(why) = why_local {
        eprintln!("bulwark: node {}'s own view ({why})", view.node_id);
    }
    Ok(Outcome::Done)
}

/// What a member is in `view`.
fn role(view: &View, member: &Member) -> &'static str {
    match (view.leader_id == Some(member.id), member.voter) {
        (true, _) => "leader",
        (false, true) => "voter",
        (false, false) => "learner",
    }
}

/// The view as a person reads it: a summary line, then one row a member.
fn describe(view: &View, quorum: Option<Quorum>) -> String {
    let voters = view.members.iter().filter(|m| m.voter).count();
    let learners = view.members.len() - voters;
    let leader = view
        .leader_id
        .map_or_else(|| "none known".into(), |l| l.to_string());
    let mut out = format!(
        "leader {leader}, term {}, commit index {}; {voters} voter(s), {learners} learner(s)",
        view.term,
        view.commit_index
            .map_or_else(|| "-".into(), |i| i.to_string())
    );
    if view.cluster_feature_level > 0 {
        out.push_str(&format!("; feature level {}", view.cluster_feature_level));
    }
    match quorum {
        Some(q) if q.tolerates < 0 => out.push_str(&format!(
            "; NO QUORUM: {} of {} voters answer, {} needed\n",
            q.healthy, q.voters, q.majority
        )),
        Some(q) => out.push_str(&format!(
            "; {} of {} voters answer, {} needed: survives {} more failure(s)\n",
            q.healthy, q.voters, q.majority, q.tolerates
        )),
        None => out.push_str(&format!(
            "\nas node {} ({}) sees it: health and lag are known to the leader only\n",
            view.node_id, view.state
        )),
    }
    let mut table = Table::new(vec![
        "ID",
        "ROLE",
        "ADDRESS",
        "HEALTH",
        "LAST CONTACT",
        "MATCHED",
        "LAG",
    ]);
    for member in &view.members {
        let health = match member.healthy {
            Some(true) => "ok",
            Some(false) => "unreachable",
            None => "-",
        };
        let last = match (member.healthy, member.last_contact_ms) {
            (None, _) => "-".into(),
            (Some(_), None) => "never".into(),
            (Some(_), Some(ms)) => format!("{:.1}s ago", ms as f64 / 1000.0),
        };
        let number = |n: Option<u64>| n.map_or_else(|| "-".into(), |n| n.to_string());
        table.row(vec![
            member.id.to_string(),
            role(view, member).into(),
            if member.addr.is_empty() {
                "-".into()
            } else {
                member.addr.clone()
            },
            health.into(),
            last,
            number(member.matched_index),
            number(member.lag),
        ]);
    }
    out.push_str(&table.to_string());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, voter: bool, healthy: bool) -> Member {
        Member {
            id,
            addr: format!("10.0.0.{id}:7001"),
            voter,
            matched_index: Some(100),
            lag: Some(0),
            last_contact_ms: Some(if healthy { 100 } else { 9000 }),
            healthy: Some(healthy),
        }
    }

    /// The leader 1's view of `members`.
    fn view(members: Vec<Member>) -> View {
        View {
            node_id: 1,
            state: "Leader".into(),
            leader_id: Some(1),
            term: 3,
            commit_index: Some(100),
            members,
            cluster_feature_level: 2,
        }
    }

    fn unsafe_(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Unsafe(_))
    }

    #[test]
    fn a_majority_of_voters_and_the_failures_it_survives() {
        let q = Quorum::of([true, true, true]);
        assert_eq!((q.majority, q.healthy, q.tolerates), (2, 3, 1));
        assert_eq!(Quorum::of([true, true, true, true]).tolerates, 1);
        assert_eq!(Quorum::of([true, false, false]).tolerates, -1);
        assert_eq!(Quorum::of([true]).tolerates, 0);
    }

    #[test]
    fn a_voter_is_removed_only_while_the_rest_can_commit_and_survive_a_failure() {
        let all_up = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, true),
        ]);
        // Three to two: from surviving one failure to none.
        assert!(unsafe_(judge_remove(&all_up, 3)));
        let three_down = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, false),
        ]);
        // The dead one goes: the two left both answer.
        assert_eq!(judge_remove(&three_down, 3), Verdict::Safe);
        // A live one goes: one of two left answers, two needed.
        let Verdict::Unsafe(why) = judge_remove(&three_down, 2) else {
            panic!("removing a live voter with another down");
        };
        assert!(why.contains("1 of 2 voters"), "{why}");
        let four = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, true),
            member(4, true, true),
        ]);
        assert_eq!(judge_remove(&four, 4), Verdict::Safe);
        // The leader: refused, it would stop commits for an election.
        assert!(unsafe_(judge_remove(&four, 1)));
    }

    #[test]
    fn learners_come_and_go_freely_and_strangers_are_refused() {
        let v = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, false),
            member(4, false, false),
        ]);
        assert_eq!(judge_remove(&v, 4), Verdict::Safe);
        assert!(matches!(judge_remove(&v, 9), Verdict::Refused(_)));
        assert!(matches!(judge_promote(&v, 9), Verdict::Refused(_)));
        assert!(matches!(judge_promote(&v, 2), Verdict::Refused(_)));
        // Two of four voters down: nothing can commit, even removing a dead one.
        let half = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, false),
            member(4, true, false),
        ]);
        let Verdict::Unsafe(why) = judge_remove(&half, 4) else {
            panic!("a change without a quorum");
        };
        assert!(why.contains("only 2 of 4 voters answer"), "{why}");
        let only = view(vec![member(1, true, true)]);
        assert!(matches!(judge_remove(&only, 1), Verdict::Refused(_)));
    }

    #[test]
    fn a_learner_is_promoted_only_when_it_answers_and_has_caught_up() {
        let mut behind = member(4, false, true);
        behind.lag = Some(PROMOTE_MAX_LAG + 1);
        let v = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, true),
            behind,
        ]);
        assert!(unsafe_(judge_promote(&v, 4)));
        let v = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, true),
            member(4, false, false),
        ]);
        assert!(unsafe_(judge_promote(&v, 4)));
        let v = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, true),
            member(4, false, true),
        ]);
        assert_eq!(judge_promote(&v, 4), Verdict::Safe);
    }

    #[test]
    fn the_table_says_who_leads_who_answers_and_the_margin() {
        let v = view(vec![
            member(1, true, true),
            member(2, true, true),
            member(3, true, false),
        ]);
        let text = describe(&v, Some(quorum_after(&v, None, None)));
        assert!(
            text.starts_with("leader 1, term 3, commit index 100; 3 voter(s), 0 learner(s); feature level 2; 2 of 3 voters answer, 2 needed: survives 0 more failure(s)\n"),
            "{text}"
        );
        let older = View {
            cluster_feature_level: 0,
            ..v.clone()
        };
        assert!(
            describe(&older, None)
                .starts_with("leader 1, term 3, commit index 100; 3 voter(s), 0 learner(s)\n"),
            "a release before feature levels says none"
        );
        assert!(
            text.contains("3   voter   10.0.0.3:7001  unreachable  9.0s ago"),
            "{text}"
        );
    }
}
