//! `RedisBudget`: one token bucket or sliding window per namespace, or per key, with its
//! book of promises, decided in the server by one script (`scripts/`), through connections
//! every thread and task of the process share.
//!
//! A plain call runs on the caller's thread over a connection of its own, taken from the
//! process's idle ones (a new one when none is idle), so no other thread is involved; a
//! `spawn_*` call runs on the I/O thread over one multiplexed connection that every task
//! shares (takes, bookings or give-backs from one budget that reach it together go as one
//! script call; after a task cancelled while booking, see [`crate::settling`]). Every call
//! is bounded by the budget's `timeout`, connecting included: a server
//! that is down fails a call at once and one that hangs (SIGSTOP) at the timeout; a
//! connection that broke is dropped, and a call that finds its reused connection dropped by
//! a restarted server tries once more on a new one; a script the server forgot is loaded
//! again. A process forked after the budget was made makes its own connections (the
//! parent's, and its runtime's threads, are not the child's to use).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ratelimit_core::{
    Backend, Booking, Clock, Decision, Error, Holder, Key, ManualClock, Quota, Refusal,
    ReservationCounts, Result, Scope, Undo,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo, RedisError, Script, Value};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::layout::Layout;
use crate::price::Rule;
use crate::settling::{Owed, Settling};
use crate::sync_connection::{Spin, SyncConnection};

/// A wait the script is told to allow when the caller allows any (microseconds, ~142 years).
const FOREVER_MICROS: u64 = 1 << 52;

/// What a budget is made with.
#[derive(Debug, Clone)]
pub struct Options {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS: the server's
    /// certificate is checked against the system's roots, or the file `SSL_CERT_FILE`
    /// names), or `unix:///path/to.sock[?db=N]`.
    pub url: String,
    pub namespace: String,
    pub scope: Scope,
    /// The bound on every call, connecting included.
    pub timeout: Duration,
    /// A test's clock: its time is passed to the script instead of the server's `TIME`.
    pub clock: Option<Arc<ManualClock>>,
    /// How long past its slot a reservation can still be executed or cancelled.
    pub reservation_ttl: Duration,
    /// How long past its slot a reservation not yet executed keeps its tokens.
    pub reservation_grace: Duration,
}

/// How soon a booking asks again when only held tokens stand in its way (the model's
/// `RECHECK`), in microseconds.
const RECHECK_MICROS: u64 = 1_000;

/// A waiting caller's turn, queued in the server's book: due when `wait` seconds have
/// passed, then admitted by [`RedisBudget::execute_turn`].
#[derive(Debug, Clone)]
pub struct Turn {
    pub wait: f64,
    key: String,
    id: u64,
}

/// A booking's answer.
#[derive(Debug, Clone)]
pub enum Booked {
    /// Admitted at once.
    Admitted(Decision),
    Turn(Turn),
    Refused(Decision),
}

/// A caller's reservation in the server's book; times in microseconds on the budget's clock
/// (the server's `TIME`, or a test's manual clock).
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub count: u64,
    pub reserved_at: u64,
    pub execute_at: u64,
    pub expires_at: u64,
}

/// A reservation's answer.
#[derive(Debug, Clone)]
pub enum Reserved {
    Reservation(Reservation),
    Refused(Decision),
}

/// How the last call to the server went (for `get_status`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Health {
    pub healthy: bool,
    /// Seconds the last answered call took.
    pub latency: f64,
}

struct Connection {
    pid: u32,
    /// The I/O thread's runtime, which that thread alone owns and drives: one thread that
    /// sleeps only when nothing is left to do (a one-worker multi-thread runtime cost a
    /// third more of the I/O thread for 16 tasks' calls).
    io: Handle,
    /// Dropped with the connection: the I/O thread then stops.
    _stop: oneshot::Sender<()>,
    manager: ConnectionManager,
    timeout: Duration,
    health: Arc<Mutex<Health>>,
    /// Calls made since the I/O thread last took them: it is woken once for all of them.
    submitted: Arc<Mutex<Vec<Submitted>>>,
    /// Budgets (by their keys) with a joined call on its way, and the calls for them that
    /// came meanwhile, in order: they go together when it is answered.
    busy: Mutex<HashMap<Vec<Vec<u8>>, Vec<Joining>>>,
}

/// A call for the I/O thread: work to run, or a take, a booking or a give-back, which joins
/// the others like it from its budget submitted with it in one script call (`takes`,
/// `books`, `cancels`).
enum Submitted {
    Work(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>),
    Joining(Joining),
}

struct Joining {
    call: Call,
    started: Instant,
    done: Box<dyn FnOnce(Result<Vec<Value>>) + Send>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs `call` on the I/O thread. A caller that finds calls already waiting there adds
    /// its own to them instead of waking the thread again: 16 tasks on one event loop each
    /// waking it cost more than the calls themselves.
    fn submit(self: &Arc<Self>, call: Submitted) {
        let mut submitted = self.submitted.lock();
        submitted.push(call);
        if submitted.len() == 1 {
            drop(submitted);
            let connection = Arc::clone(self);
            self.io.spawn(async move { connection.run_submitted() });
        }
    }

    /// On the I/O thread: starts every call submitted so far, the takes (bookings,
    /// give-backs) from one budget as one script call. Each is still decided alone, in the
    /// order submitted (the script runs them one after another), at the server's one
    /// instant for them all.
    fn run_submitted(self: &Arc<Self>) {
        let mut joining = Vec::new();
        for call in std::mem::take(&mut *self.submitted.lock()) {
            match call {
                Submitted::Work(work) => drop(tokio::spawn(work)),
                Submitted::Joining(call) => joining.push(call),
            }
        }
        self.join(joining);
    }

    /// Starts `calls` in groups that join. Bookings and give-backs go one joined call per
    /// budget at a time: those for a budget whose joined call is on its way wait for its
    /// answer and then go together (a thousand tasks booking at once made 180 calls, each
    /// reading the whole book, when every group went at once). Takes, which read no book
    /// when none is kept, go at once (waiting cost 16 tasks a tenth of their rate).
    fn join(self: &Arc<Self>, calls: Vec<Joining>) {
        let mut groups: Vec<Vec<Joining>> = Vec::new();
        {
            let mut busy = self.busy.lock();
            for call in calls {
                let in_turn = call.call.in_turn();
                if let (true, Some(waiting)) = (in_turn, busy.get_mut(&call.call.keys)) {
                    waiting.push(call);
                    continue;
                }
                let keys = &call.call.keys;
                let starting = groups
                    .iter()
                    .any(|g| g[0].call.in_turn() && &g[0].call.keys == keys);
                if let Some(group) = groups.iter_mut().find(|g| g[0].call.joins(&call.call)) {
                    group.push(call);
                } else if in_turn && starting {
                    // Another booking or give-back for a budget whose call is starting.
                    busy.entry(call.call.keys.clone()).or_default().push(call);
                } else {
                    groups.push(vec![call]);
                }
            }
            for group in groups.iter().filter(|g| g[0].call.in_turn()) {
                busy.entry(group[0].call.keys.clone()).or_default();
            }
        }
        for group in groups {
            self.spawn_joined(group);
        }
    }

    /// The calls that waited for `keys`' joined call, which was answered: they go now.
    fn answered(self: &Arc<Self>, keys: &[Vec<u8>]) {
        let waiting = self.busy.lock().remove(keys).unwrap_or_default();
        if !waiting.is_empty() {
            self.join(waiting);
        }
    }

    /// Runs calls that join each other as one script call, within the earliest of their
    /// timeouts; each gets its own answer, or the failure.
    fn spawn_joined(self: &Arc<Self>, group: Vec<Joining>) {
        let started =
            (group.iter().map(|call| call.started).min()).expect("a group has a first call");
        let (timeout, health) = (self.timeout, Arc::clone(&self.health));
        let mut manager = self.manager.clone();
        let call = Call::joined(group.iter().map(|call| &call.call));
        let width = call.answer_width();
        let connection = Arc::clone(self);
        tokio::spawn(async move {
            let invocation = invocation(&call);
            let invoked = invocation.invoke_async::<Vec<Value>>(&mut manager);
            let answer = within(invoked, started, timeout, &health).await;
            if call.in_turn() {
                connection.answered(&call.keys);
            }
            let answers = answer.and_then(|reply| match group.len() {
                1 => Ok(vec![reply]),
                n if reply.len() == width * n => {
                    Ok(reply.chunks(width).map(<[Value]>::to_vec).collect())
                }
                _ => Err(malformed(reply.first())),
            });
            match answers {
                Ok(answers) => {
                    for (call, answer) in group.into_iter().zip(answers) {
                        (call.done)(Ok(answer));
                    }
                }
                Err(error) => group
                    .into_iter()
                    .for_each(|call| (call.done)(Err(error.clone()))),
            }
        });
    }
}

#[derive(Debug)]
pub struct RedisBudget {
    layout: Layout,
    client: Client,
    bucket: Arc<Script>,
    window: Arc<Script>,
    timeout: Duration,
    /// The time source waits are measured on: a test's manual clock (whose time the
    /// scripts are then given), else the monotonic clock (the scripts read `TIME`).
    time: Clock,
    reservation_ttl: u64,
    reservation_grace: u64,
    quota: Mutex<(Quota, Rule)>,
    connection: Mutex<Option<Arc<Connection>>>,
    idle: Mutex<Idle>,
    /// Whether this budget's plain calls spin for their answers.
    spin: Arc<Spin>,
    /// Tasks' turns on their way back from the I/O thread, which later calls wait for.
    settling: Arc<Settling>,
    health: Arc<Mutex<Health>>,
}

/// Connections of process `pid` that no call is using.
struct Idle {
    pid: u32,
    connections: Vec<SyncConnection>,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Idle({} connections)", self.connections.len())
    }
}

/// One call's script and arguments, owned, so that a task can carry them.
struct Call {
    script: Arc<Script>,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

/// Where a call's count is, among its arguments (the script's `ARGV[5]`).
const COUNT_ARG: usize = 4;
/// Where a call's booking id is (`ARGV[8]`).
const ID_ARG: usize = 7;

impl Call {
    /// The argument in which calls of this one's kind that join differ: a take's or a
    /// booking's count, a give-back's id (`None`: calls of this kind go alone).
    fn joining_arg(&self) -> Option<usize> {
        match self.args[0].as_slice() {
            b"take" | b"book" => Some(COUNT_ARG),
            b"cancel" => Some(ID_ARG),
            _ => None,
        }
    }

    /// Whether this is a booking or a give-back (one or many), which go one joined call per
    /// budget at a time.
    fn in_turn(&self) -> bool {
        self.args[0].starts_with(b"book") || self.args[0].starts_with(b"cancel")
    }

    /// Whether `other` is a call of this one's kind on the same budget at the same time
    /// (every argument the same but the joining one).
    fn joins(&self, other: &Call) -> bool {
        let Some(joining) = self.joining_arg() else {
            return false;
        };
        self.keys == other.keys
            && Arc::ptr_eq(&self.script, &other.script)
            && self.args.len() == other.args.len()
            && (self.args.iter().zip(&other.args).enumerate())
                .all(|(at, (mine, theirs))| at == joining || mine == theirs)
    }

    /// One call for calls that join each other: the script's op for many (`takes`,
    /// `books`, `cancels`), their joining arguments in order (a lone call stays itself).
    fn joined<'a>(mut calls: impl ExactSizeIterator<Item = &'a Call>) -> Call {
        let first = calls.next().expect("a group has a first call");
        let mut args = first.args.clone();
        if let (Some(joining), true) = (first.joining_arg(), calls.len() > 0) {
            args[0].push(b's');
            for call in calls {
                args[joining].push(b',');
                args[joining].extend_from_slice(&call.args[joining]);
            }
        }
        Call {
            script: Arc::clone(&first.script),
            keys: first.keys.clone(),
            args,
        }
    }

    /// Values in each answer of a joined call (`books` pads every answer to a booking's).
    fn answer_width(&self) -> usize {
        if self.args[0] == b"books" {
            8
        } else {
            5
        }
    }
}

impl RedisBudget {
    pub fn new(quota: Quota, options: Options) -> Result<Self> {
        let rule = Rule::of(&quota)?;
        let layout = Layout::new(&options.namespace, options.scope)?;
        // Without the library-name handshake, connecting is one round trip at most (AUTH
        // and SELECT when the URL asks), so it stays within what is left of a timeout.
        let client = options
            .url
            .as_str()
            .into_connection_info()
            .map(|info| {
                let settings = info.redis_settings().clone().set_skip_set_lib_name();
                info.set_redis_settings(settings)
            })
            .and_then(Client::open)
            .map_err(|error| Error::InvalidArgument {
                argument: "redis_url",
                message: format!("is not a Redis URL this client can use: {error}"),
            })?;
        if !(options.timeout > Duration::ZERO && options.timeout <= Duration::from_secs(3600)) {
            return Err(Error::InvalidArgument {
                argument: "timeout",
                message: format!(
                    "must be more than 0 and at most 3600 seconds, got {:?}",
                    options.timeout
                ),
            });
        }
        Ok(Self {
            layout,
            client,
            bucket: Arc::new(Script::new(concat!(
                include_str!("scripts/prelude.lua"),
                include_str!("scripts/bucket.lua"),
                include_str!("scripts/quiet_take.lua"),
                include_str!("scripts/bucket_promises.lua"),
                include_str!("scripts/book.lua"),
            ))),
            window: Arc::new(Script::new(concat!(
                include_str!("scripts/prelude.lua"),
                include_str!("scripts/window.lua"),
                include_str!("scripts/quiet_take.lua"),
                include_str!("scripts/window_promises.lua"),
                include_str!("scripts/book.lua"),
            ))),
            timeout: options.timeout,
            time: options.clock.map_or_else(Clock::monotonic, Clock::Manual),
            reservation_ttl: options.reservation_ttl.as_micros() as u64,
            reservation_grace: options.reservation_grace.as_micros() as u64,
            quota: Mutex::new((quota, rule)),
            connection: Mutex::new(None),
            idle: Mutex::new(Idle {
                pid: std::process::id(),
                connections: Vec::new(),
            }),
            spin: Arc::default(),
            settling: Arc::default(),
            health: Arc::new(Mutex::new(Health {
                healthy: true,
                latency: 0.0,
            })),
        })
    }

    pub fn quota(&self) -> Quota {
        self.quota.lock().0
    }

    /// Changes rate, period and burst for this process's calls: the tokens left carry over,
    /// up to the new burst, and a back-off still owed ends when it did.
    pub fn set_quota(&self, quota: Quota) -> Result<()> {
        let mut current = self.quota.lock();
        if quota.algorithm != current.0.algorithm {
            return Err(Error::InvalidArgument {
                argument: "algorithm",
                message: "stays as the limiter was made".into(),
            });
        }
        *current = (quota, Rule::of(&quota)?);
        drop(current);
        if self.layout.scope() == Scope::Global {
            // The shared budget converts now, when the rate changed (a budget converts at its
            // first call under a new quota; a key's, with `scope="key"`, at its next call).
            // A server that does not answer leaves that to the next call.
            let _ = self.peek("");
        }
        Ok(())
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn health(&self) -> Health {
        *self.health.lock()
    }

    /// The key pattern every key of this namespace matches.
    pub fn pattern(&self) -> String {
        self.layout.pattern()
    }

    /// Takes `count` tokens for `key` now, or refuses with the wait.
    pub fn try_acquire(&self, key: &str, count: u64) -> Result<Decision> {
        let (call, token) = self.call("take", key, count, 0)?;
        self.run(call).and_then(|reply| decision(&reply, token))
    }

    /// [`RedisBudget::try_acquire`] on the connection's runtime; `done` gets the answer there.
    pub fn spawn_try_acquire(
        &self,
        key: &str,
        count: u64,
        done: impl FnOnce(Result<Decision>) + Send + 'static,
    ) {
        match self.call("take", key, count, 0) {
            Ok((call, token)) => self.spawn_joining(call, move |reply| {
                done(reply.and_then(|reply| decision(&reply, token)))
            }),
            Err(error) => done(Err(error)),
        }
    }

    /// Decides every `(key, count)` in one round trip, each as [`RedisBudget::try_acquire`]
    /// in the order given: one script call per budget (every request with `scope="global"`),
    /// taking that budget's requests in order.
    pub fn try_acquire_many(&self, requests: &[(&str, u64)]) -> Result<Vec<Decision>> {
        // The requests of each budget, in order.
        let mut budgets: Vec<(&str, Vec<usize>)> = Vec::new();
        let mut found: HashMap<Vec<u8>, usize> = HashMap::new();
        for (i, &(key, _)) in requests.iter().enumerate() {
            let at = *found.entry(self.layout.name("", key)).or_insert_with(|| {
                budgets.push((key, Vec::new()));
                budgets.len() - 1
            });
            budgets[at].1.push(i);
        }
        let mut calls = Vec::with_capacity(budgets.len());
        let mut token = 0;
        for (key, members) in &budgets {
            let (mut call, unit) = self.call("takes", key, 0, 0)?;
            let counts: Vec<String> = members.iter().map(|&i| requests[i].1.to_string()).collect();
            call.args[4] = counts.join(",").into_bytes();
            calls.push(call);
            token = unit;
        }
        let pipeline = {
            let mut pipe = redis::pipe();
            for call in &calls {
                pipe.cmd("EVALSHA")
                    .arg(call.script.get_hash())
                    .arg(call.keys.len())
                    .arg(&call.keys)
                    .arg(&call.args);
            }
            pipe
        };
        let replies: Vec<Vec<Value>> =
            self.blocking(|connection| match pipeline.query(connection) {
                Err(error) if is_no_script(&error) => {
                    self.bucket.load(connection)?;
                    self.window.load(connection)?;
                    pipeline.query(connection)
                }
                other => other,
            })?;
        let mut decisions = vec![None; requests.len()];
        for ((_, members), reply) in budgets.iter().zip(&replies) {
            if reply.len() != members.len() * 5 {
                return Err(malformed(reply.first()));
            }
            for (&i, answer) in members.iter().zip(reply.chunks(5)) {
                decisions[i] = Some(decision(answer, token)?);
            }
        }
        Ok(decisions.into_iter().flatten().collect())
    }

    /// Books a waiting caller's turn: `count` tokens at the first slot after every earlier
    /// turn, refused `max_wait_exceeded` if that is more than `max_wait` seconds away.
    pub fn book_turn(&self, key: &str, count: u64, max_wait: f64) -> Result<Booked> {
        let (call, unit) = self.turn_call(key, count, max_wait)?;
        let key = key.to_owned();
        self.run(call).and_then(|reply| booked(&reply, key, unit))
    }

    /// [`RedisBudget::book_turn`] on the connection's runtime; `done` gets the answer there.
    pub fn spawn_book_turn(
        &self,
        key: &str,
        count: u64,
        max_wait: f64,
        done: impl FnOnce(Result<Booked>) + Send + 'static,
    ) {
        match self.turn_call(key, count, max_wait) {
            Ok((call, unit)) => {
                let key = key.to_owned();
                self.spawn_joining(call, move |reply| {
                    done(reply.and_then(|reply| booked(&reply, key, unit)))
                })
            }
            Err(error) => done(Err(error)),
        }
    }

    /// A booking whose caller is gone before its answer came (a cancelled task): owed back
    /// from now; every later call of this process on the budget waits until it is back
    /// (see [`RedisBudget::give_back_abandoned`]).
    pub fn abandon(&self) -> Owed {
        self.settling.owe()
    }

    /// Gives back the turn an abandoned booking got, if it got one, on the I/O thread and
    /// ahead of the calls waiting for it; the debt is paid when it is back (or failed).
    pub fn give_back_abandoned(&self, abandoned: Owed, answer: Result<Booked>) {
        if let Ok(Booked::Turn(turn)) = answer {
            self.give_back_owed(&turn, abandoned, |_| ());
        }
    }

    /// Gives `turn` back on the I/O thread, ahead of the calls waiting for what is owed;
    /// `owed` is paid, and the waiters told, once it is back (or failed: a turn never
    /// given back lapses by itself).
    fn give_back_owed(
        &self,
        turn: &Turn,
        owed: Owed,
        done: impl FnOnce(Result<bool>) + Send + 'static,
    ) {
        let settling = Arc::clone(&self.settling);
        let call = self.call_on("cancel", &turn.key, 1, 0, turn.id, "c");
        match call.and_then(|(call, _)| Ok((call, self.connection()?))) {
            Ok((call, connection)) => connection.submit(Submitted::Joining(Joining {
                call,
                started: Instant::now(),
                done: Box::new(move |reply| {
                    settling.gave_back();
                    drop(owed);
                    done(reply.and_then(|reply| Ok(micros(&reply, 0)? == 1)))
                }),
            })),
            Err(error) => {
                drop(owed);
                done(Err(error))
            }
        }
    }

    /// Whether a turn this process gave back or abandoned is still on its way back.
    pub fn owes(&self) -> bool {
        self.settling.owes()
    }

    /// Blocks until no turn is owed back, within the timeout.
    pub fn settled(&self) {
        self.settling.wait(Instant::now() + self.timeout);
    }

    /// `done` runs once no turn is owed back (now, if none is).
    pub fn spawn_settled(&self, done: impl FnOnce() + Send + 'static) {
        self.settling.after(done);
    }

    /// How many turns and reservations this process has given back on this budget: a
    /// waiter that sees it change asks again, as the turns ahead of it may have gone.
    pub fn given_back(&self) -> u64 {
        self.settling.given_back()
    }

    fn turn_call(&self, key: &str, count: u64, max_wait: f64) -> Result<(Call, u64)> {
        self.call_on("book", key, count, micros_within(max_wait), 0, "w")
    }

    /// Admits a turn that is due, when the server's book says so; one not ready whose next
    /// chance is more than `max_wait` seconds away is given back and refused
    /// `max_wait_exceeded` with that wait.
    pub fn execute_turn(&self, turn: &Turn, max_wait: f64) -> Result<Decision> {
        let (call, unit) = self.call_on("execute", &turn.key, 1, 0, turn.id, "w")?;
        let decision = self.run(call).and_then(|reply| decision(&reply, unit))?;
        if decision.not_ready_past(max_wait) {
            self.give_back(turn)?;
            return Ok(decision.past_max_wait());
        }
        Ok(decision)
    }

    /// [`RedisBudget::execute_turn`] on the connection's runtime; `done` gets the answer
    /// there.
    pub fn spawn_execute_turn(
        &self,
        turn: &Turn,
        max_wait: f64,
        done: impl FnOnce(Result<Decision>) + Send + 'static,
    ) {
        let (key, id) = (&turn.key, turn.id);
        let calls = self
            .call_on("execute", key, 1, 0, id, "w")
            .and_then(|(execute, unit)| {
                Ok((execute, unit, self.call_on("cancel", key, 1, 0, id, "w")?.0))
            });
        let (execute, unit, cancel) = match calls {
            Ok(calls) => calls,
            Err(error) => return done(Err(error)),
        };
        // Both round trips within one timeout.
        let work = move |mut manager: ConnectionManager| async move {
            let reply: Vec<Value> = invocation(&execute).invoke_async(&mut manager).await?;
            let late = decision(&reply, unit).is_ok_and(|d| d.not_ready_past(max_wait));
            if late {
                invocation(&cancel)
                    .invoke_async::<Vec<Value>>(&mut manager)
                    .await?;
            }
            Ok((reply, late))
        };
        self.spawn(work, move |answer| {
            done(answer.and_then(|(reply, late)| {
                let decision = decision(&reply, unit)?;
                Ok(if late {
                    decision.past_max_wait()
                } else {
                    decision
                })
            }))
        });
    }

    /// Gives a turn back (cancels it): whether it was still live.
    pub fn give_back(&self, turn: &Turn) -> Result<bool> {
        self.cancel_booking(&turn.key, turn.id)
    }

    /// Books a caller's reservation of `count` tokens at the first slot after every other
    /// promise, refused `max_wait_exceeded` if that is more than `max_wait` seconds away.
    pub fn reserve(&self, key: &str, count: u64, max_wait: f64) -> Result<Reserved> {
        let (call, unit) = self.call_on("book", key, count, micros_within(max_wait), 0, "c")?;
        let reply = self.run(call)?;
        let answer = decision(&reply, unit)?;
        if !answer.allowed {
            if answer.reason == Some(Refusal::TooManyReservations) {
                return Err(Error::TooManyReservations { max: MAX_BOOKINGS });
            }
            return Ok(Reserved::Refused(answer));
        }
        let id = micros(&reply, 5)?;
        Ok(Reserved::Reservation(Reservation {
            id: self.layout.reservation_id(id, key),
            count,
            reserved_at: micros(&reply, 4)?,
            execute_at: micros(&reply, 6)?,
            expires_at: micros(&reply, 7)?,
        }))
    }

    /// `reservation` on this budget's clock: its slot and expiry as far from now as the
    /// server put them from its own now.
    pub fn placed(&self, reservation: &Reservation) -> ratelimit_core::Reservation {
        let now = self.time.now();
        let at = |micros: u64| now + micros.saturating_sub(reservation.reserved_at) * 1_000;
        ratelimit_core::Reservation {
            id: reservation.id.clone(),
            count: reservation.count,
            shard: 0,
            reserved_at: now,
            execute_at: at(reservation.execute_at),
            expires_at: at(reservation.expires_at),
        }
    }

    /// Microseconds on the server's clock (or the test's manual clock the scripts were
    /// given) as epoch seconds.
    pub fn epoch(&self, micros: u64) -> f64 {
        match &self.time {
            Clock::Manual(_) => self.time.to_epoch(micros * 1_000),
            Clock::Monotonic { .. } => micros as f64 / 1e6,
        }
    }

    /// Admits a caller's reservation once its slot has come (see the core's
    /// `execute_reservation`).
    pub fn execute_reservation(&self, id: &str) -> Result<Decision> {
        let Some((id, key)) = self.layout.parse_reservation_id(id) else {
            return Ok(refusal(Refusal::UnknownReservation));
        };
        let (call, unit) = self.call_on("execute", key, 1, 0, id, "c")?;
        self.run(call).and_then(|reply| decision(&reply, unit))
    }

    /// Gives a caller's reservation back: whether it was live.
    pub fn cancel_reservation(&self, id: &str) -> Result<bool> {
        match self.layout.parse_reservation_id(id) {
            Some((id, key)) => self.cancel_booking(key, id),
            None => Ok(false),
        }
    }

    fn cancel_booking(&self, key: &str, id: u64) -> Result<bool> {
        let (call, _) = self.call_on("cancel", key, 1, 0, id, "c")?;
        let reply = self.run(call)?;
        self.settling.gave_back();
        Ok(micros(&reply, 0)? == 1)
    }

    /// [`RedisBudget::give_back`] on the connection's runtime; `done` gets the answer there.
    /// Later calls of this process on the budget wait until the turn is back, as they do
    /// for an abandoned booking's.
    pub fn spawn_give_back(&self, turn: &Turn, done: impl FnOnce(Result<bool>) + Send + 'static) {
        self.give_back_owed(turn, self.settling.owe(), done);
    }

    /// Tokens a take could have now.
    pub fn peek(&self, key: &str) -> Result<f64> {
        let (call, unit) = self.call("peek", key, 1, 0)?;
        let reply = self.run(call)?;
        Ok(micros(&reply, 3)? as f64 / unit as f64)
    }

    /// Nothing is admitted from the budget `key` draws on for `seconds`; then it refills
    /// from empty.
    pub fn back_off(&self, key: &str, seconds: f64) -> Result<()> {
        let max = self.quota.lock().1.max_micros();
        if !(seconds.is_finite() && seconds >= 0.0 && seconds * 1e6 <= max as f64) {
            return Err(Error::InvalidArgument {
                argument: "seconds",
                message: format!(
                    "must be a finite number of seconds from 0 to {} on Redis, got {seconds}",
                    max / 1_000_000
                ),
            });
        }
        let micros = whole_nanos(seconds).div_ceil(1_000) as u64;
        let (call, _) = self.call("owe", key, 1, micros)?;
        self.run(call).map(drop)
    }

    /// Forgets the budget `key` draws on (every key's, with `None`): it is full again.
    pub fn reset(&self, key: Option<&str>) -> Result<()> {
        let names = ["tb", "sw", "swl"].map(|part| self.layout.name(part, key.unwrap_or("")));
        let pattern = self.layout.pattern();
        let every_key = key.is_none() && self.layout.scope() == Scope::Key;
        self.blocking(|connection| {
            let mut names = names.to_vec();
            if every_key {
                names.clear();
                let mut cursor = 0u64;
                loop {
                    let (next, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query(connection)?;
                    names.extend(found);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            if names.is_empty() {
                return Ok(());
            }
            redis::cmd("DEL").arg(names).query(connection)
        })
    }

    /// The script and arguments for `op` on `key`'s budget, and the units of a token.
    fn call(&self, op: &str, key: &str, count: u64, arg: u64) -> Result<(Call, u64)> {
        self.call_on(op, key, count, arg, 0, "c")
    }

    /// [`RedisBudget::call`] about booking `id`, or for a booking by `holder`.
    fn call_on(
        &self,
        op: &str,
        key: &str,
        count: u64,
        arg: u64,
        id: u64,
        holder: &str,
    ) -> Result<(Call, u64)> {
        if key.len() > ratelimit_core::MAX_KEY_LEN {
            return Err(Error::InvalidArgument {
                argument: "key",
                message: format!(
                    "must be at most {} bytes, got {}",
                    ratelimit_core::MAX_KEY_LEN,
                    key.len()
                ),
            });
        }
        let rule = self.quota.lock().1;
        let now = match &self.time {
            Clock::Manual(clock) => (clock.now() / 1_000).to_string(),
            Clock::Monotonic { .. } => String::new(),
        };
        let [first, second, third] = rule.params().map(|param| param.to_string());
        let args = [
            op.to_string(),
            first,
            second,
            third,
            count.to_string(),
            arg.to_string(),
            now,
            id.to_string(),
            self.reservation_ttl.to_string(),
            self.reservation_grace.to_string(),
            RECHECK_MICROS.to_string(),
            holder.to_string(),
        ];
        let (script, keys) = match rule {
            Rule::Bucket(_) => (&self.bucket, vec![self.layout.name("tb", key)]),
            Rule::Window { .. } => (
                &self.window,
                vec![self.layout.name("sw", key), self.layout.name("swl", key)],
            ),
        };
        Ok((
            Call {
                script: Arc::clone(script),
                keys,
                args: args.into_iter().map(String::into_bytes).collect(),
            },
            rule.unit(),
        ))
    }

    /// Runs `call` on this thread, bounded by the timeout.
    fn run(&self, call: Call) -> Result<Vec<Value>> {
        self.blocking(|connection| invocation(&call).invoke(connection))
    }

    /// Runs `work` over the multiplexed connection as a task on its runtime, within the
    /// timeout; records how it went; `done` gets the answer there.
    fn spawn<T, Work>(
        &self,
        work: impl FnOnce(ConnectionManager) -> Work + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) where
        Work: std::future::Future<Output = redis::RedisResult<T>> + Send + 'static,
    {
        let connection = match self.connection() {
            Ok(connection) => connection,
            Err(error) => return done(Err(error)),
        };
        let manager = connection.manager.clone();
        let timeout = self.timeout;
        let health = Arc::clone(&self.health);
        let started = Instant::now();
        let work = Submitted::Work(Box::pin(async move {
            done(within(work(manager), started, timeout, &health).await);
        }));
        self.settling.after(move || connection.submit(work));
    }

    /// Runs `call`, a take, booking or give-back, on the I/O thread, joined with the calls
    /// like it from its budget that reach the thread with it; `done` gets its answer there.
    fn spawn_joining(&self, call: Call, done: impl FnOnce(Result<Vec<Value>>) + Send + 'static) {
        let connection = match self.connection() {
            Ok(connection) => connection,
            Err(error) => return done(Err(error)),
        };
        let call = Submitted::Joining(Joining {
            call,
            started: Instant::now(),
            done: Box::new(done),
        });
        self.settling.after(move || connection.submit(call));
    }

    /// Runs `work` on this thread over an idle connection of this process (a new one when
    /// none is idle), within the timeout: connecting, and every read and write, get what
    /// is left of it. Records how it went.
    fn blocking<T>(
        &self,
        work: impl Fn(&mut SyncConnection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let started = Instant::now();
        self.settling.wait(started + self.timeout);
        let mut fresh = false;
        let answer = loop {
            let left = self.timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break None;
            }
            let reused = if fresh { None } else { self.take_idle() };
            let was_reused = reused.is_some();
            let mut connection = match reused {
                Some(connection) => connection,
                None => match SyncConnection::open(&self.client, left, &self.spin) {
                    Ok(connection) => connection,
                    Err(error) => break Some(Err(error)),
                },
            };
            // An idle connection's reads and writes are bounded by the whole timeout already
            // (set when it went idle); a new one gets what connecting left of it.
            let answer = if was_reused {
                work(&mut connection)
            } else {
                let left = self.timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break None;
                }
                bound(&connection, left).and_then(|()| work(&mut connection))
            };
            match answer {
                // A server restarted since this connection was last used: once more, anew.
                Err(error) if error.is_connection_dropped() && was_reused && !fresh => {
                    fresh = true;
                }
                // A broken connection is dropped; one the server answered goes back.
                Err(error) if error.is_io_error() || error.is_connection_dropped() => {
                    break Some(Err(error));
                }
                answer => {
                    if was_reused || bound(&connection, self.timeout).is_ok() {
                        self.put_idle(connection);
                    }
                    break Some(answer);
                }
            }
        };
        let (answer, health) = settle(answer, self.timeout, started);
        *self.health.lock() = health;
        answer
    }

    fn take_idle(&self) -> Option<SyncConnection> {
        let mut idle = self.idle.lock();
        let pid = std::process::id();
        if idle.pid != pid {
            // A forked child's copies of its parent's sockets: not to be used, nor closed.
            std::mem::forget(std::mem::take(&mut idle.connections));
            idle.pid = pid;
        }
        idle.connections.pop()
    }

    fn put_idle(&self, connection: SyncConnection) {
        let mut idle = self.idle.lock();
        if idle.pid == std::process::id() {
            idle.connections.push(connection);
        }
    }

    /// This process's connection, made on first use.
    fn connection(&self) -> Result<Arc<Connection>> {
        let pid = std::process::id();
        let mut slot = self.connection.lock();
        if let Some(connection) = slot.as_ref() {
            if connection.pid == pid {
                return Ok(Arc::clone(connection));
            }
            // Made by the parent of this forked process: its runtime's threads are not
            // here, so it can be neither used nor shut down. Left alone.
            std::mem::forget(slot.take());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| Error::Unavailable {
                cause: format!("could not start the I/O thread: {error}"),
            })?;
        let io = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ratelimit-redis".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })
            .map_err(|error| Error::Unavailable {
                cause: format!("could not start the I/O thread: {error}"),
            })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(0)
            .set_max_delay(Duration::from_millis(100));
        let manager = {
            let _inside = io.enter();
            ConnectionManager::new_lazy_with_config(self.client.clone(), config)
        }
        .map_err(unavailable)?;
        let connection = Arc::new(Connection {
            pid,
            io,
            _stop: stop,
            manager,
            timeout: self.timeout,
            health: Arc::clone(&self.health),
            submitted: Arc::new(Mutex::new(Vec::new())),
            busy: Mutex::default(),
        });
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

/// The seam over the server's book: what a `RateLimiter::with_backend` asks. Keys cross
/// by their text; times come back as durations from the server's now, placed on this
/// budget's clock.
impl Backend for RedisBudget {
    fn clock(&self) -> &Clock {
        &self.time
    }

    fn quota(&self) -> Quota {
        RedisBudget::quota(self)
    }

    fn scope(&self) -> Scope {
        self.layout.scope()
    }

    fn try_acquire(&self, key: Key<'_>, count: u64) -> Result<Decision> {
        RedisBudget::try_acquire(self, key.text()?, count)
    }

    /// A take in the server cannot be given back: it stays charged (never over).
    fn take(&self, key: Key<'_>, count: u64) -> Result<(Decision, Option<Undo>)> {
        Ok((RedisBudget::try_acquire(self, key.text()?, count)?, None))
    }

    /// Never called: no take here is given back.
    fn undo(&self, _undo: Undo) -> Result<()> {
        Ok(())
    }

    fn book(&self, key: Key<'_>, count: u64, max_wait: f64, holder: Holder) -> Result<Booking> {
        let key = key.text()?;
        match holder {
            Holder::Caller => Ok(match self.reserve(key, count, max_wait)? {
                Reserved::Reservation(r) => Booking::Reserved(self.placed(&r)),
                Reserved::Refused(decision) => Booking::Decided(decision),
            }),
            Holder::Waiter => Ok(match self.book_turn(key, count, max_wait)? {
                Booked::Admitted(decision) | Booked::Refused(decision) => {
                    Booking::Decided(decision)
                }
                Booked::Turn(turn) => {
                    let now = self.time.now();
                    Booking::Reserved(ratelimit_core::Reservation {
                        id: self.layout.reservation_id(turn.id, &turn.key),
                        count,
                        shard: 0,
                        reserved_at: now,
                        execute_at: now + whole_nanos(turn.wait) as u64,
                        expires_at: u64::MAX,
                    })
                }
            }),
        }
    }

    fn execute_reservation(&self, id: &str) -> Result<Decision> {
        RedisBudget::execute_reservation(self, id)
    }

    fn cancel_reservation(&self, id: &str) -> Result<bool> {
        RedisBudget::cancel_reservation(self, id)
    }

    /// The server's book is per budget and keeps no totals.
    fn reservation_counts(&self) -> Result<ReservationCounts> {
        Err(Error::InvalidArgument {
            argument: "reservations",
            message: "are counted by the in-memory budgets only".into(),
        })
    }

    fn peek(&self, key: Key<'_>) -> Result<f64> {
        RedisBudget::peek(self, key.text()?)
    }

    fn set_quota(&self, quota: Quota) -> Result<()> {
        RedisBudget::set_quota(self, quota)
    }

    fn back_off(&self, key: Key<'_>, seconds: f64) -> Result<()> {
        RedisBudget::back_off(self, key.text()?, seconds)
    }

    fn reset(&self) -> Result<()> {
        RedisBudget::reset(self, None)
    }

    fn reset_key(&self, key: Key<'_>) -> Result<()> {
        RedisBudget::reset(self, Some(key.text()?))
    }
}

/// Runs `wake` on the I/O thread once the answers it has in hand are handed over (at once
/// anywhere else): whoever is woken per batch of answers is woken once for all of them.
pub fn after_answers(wake: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(io) => drop(io.spawn(async move {
            tokio::task::yield_now().await;
            wake();
        })),
        Err(_) => wake(),
    }
}

/// Bounds every read and write on `connection` by `timeout`.
fn bound(connection: &SyncConnection, timeout: Duration) -> redis::RedisResult<()> {
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))
}

/// `seconds` in whole nanoseconds (the float's rounding noise gone), which the script's
/// microseconds then round toward the caller: bounds down, back-offs up.
fn whole_nanos(seconds: f64) -> u128 {
    (seconds.max(0.0) * 1e9).round() as u128
}

fn invocation(call: &Call) -> redis::ScriptInvocation<'_> {
    let mut invocation = call.script.prepare_invoke();
    for key in &call.keys {
        invocation.key(key);
    }
    for arg in &call.args {
        invocation.arg(arg);
    }
    invocation
}

/// What `work`, a call started at `started`, answers by `timeout` after that; the health it
/// shows is recorded.
async fn within<T>(
    work: impl std::future::Future<Output = redis::RedisResult<T>>,
    started: Instant,
    timeout: Duration,
    health: &Mutex<Health>,
) -> Result<T> {
    let deadline = tokio::time::Instant::from_std(started) + timeout;
    let answer = tokio::time::timeout_at(deadline, work).await;
    let (answer, now) = settle(answer.ok(), timeout, started);
    *health.lock() = now;
    answer
}

/// A call's outcome (`None`: no answer within the timeout), and the health it shows.
fn settle<T>(
    answer: Option<redis::RedisResult<T>>,
    timeout: Duration,
    started: Instant,
) -> (Result<T>, Health) {
    let latency = started.elapsed().as_secs_f64();
    match answer {
        Some(Ok(value)) => (
            Ok(value),
            Health {
                healthy: true,
                latency,
            },
        ),
        Some(Err(error)) if error.is_timeout() => settle(None, timeout, started),
        Some(Err(error)) => {
            let healthy = !(error.is_io_error()
                || error.is_timeout()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error());
            (Err(failure(error)), Health { healthy, latency })
        }
        None => (
            Err(Error::Unavailable {
                cause: format!("no answer within the timeout of {timeout:?}"),
            }),
            Health {
                healthy: false,
                latency,
            },
        ),
    }
}

/// A server that refused the command (an ACL, a wrong type) said so; anything else is a
/// server that did not answer.
fn failure(error: RedisError) -> Error {
    match error.code() {
        Some(code) if !(error.is_io_error() || error.is_connection_dropped()) => Error::Denied {
            cause: format!("{code}: {}", error.detail().unwrap_or_default()),
        },
        _ => unavailable(error),
    }
}

fn unavailable(error: RedisError) -> Error {
    Error::Unavailable {
        cause: error.to_string(),
    }
}

fn is_no_script(error: &RedisError) -> bool {
    error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
}

/// The script's answer to a turn: admitted at once, the turn, or the refusal.
fn booked(reply: &[Value], key: String, unit: u64) -> Result<Booked> {
    let answer = decision(reply, unit)?;
    if !answer.allowed {
        return Ok(Booked::Refused(answer));
    }
    // A turn admitted at once has no id (in a joined `books` answer, id 0).
    if reply.len() == 5 || micros(reply, 5)? == 0 {
        return Ok(Booked::Admitted(answer));
    }
    Ok(Booked::Turn(Turn {
        wait: micros(reply, 2)? as f64 / 1e6,
        key,
        id: micros(reply, 5)?,
    }))
}

/// The most bookings a budget keeps in the server at once.
pub const MAX_BOOKINGS: usize = 10_000;

/// A refusal decided without asking the server.
fn refusal(reason: Refusal) -> Decision {
    Decision {
        allowed: false,
        reason: Some(reason),
        shard: 0,
        retry_after: None,
        at: 0,
        remaining_units: None,
        unit: 1,
        sampled: false,
    }
}

/// A wait bound in seconds as the script's microseconds (down; any wait when infinite).
fn micros_within(max_wait: f64) -> u64 {
    if max_wait.is_finite() {
        (whole_nanos(max_wait).div_euclid(1_000) as u64).min(FOREVER_MICROS)
    } else {
        FOREVER_MICROS
    }
}

/// The script's answer `{allowed, code, wait, free, now}` as a decision.
fn decision(reply: &[Value], token: u64) -> Result<Decision> {
    let allowed = micros(reply, 0)? == 1;
    let reason = match micros(reply, 1)? {
        0 => None,
        1 => Some(Refusal::RateLimited),
        2 => Some(Refusal::ExceedsCapacity),
        3 => Some(Refusal::MaxWaitExceeded),
        4 => Some(Refusal::NotReady),
        5 => Some(Refusal::Expired),
        6 => Some(Refusal::Cancelled),
        7 => Some(Refusal::AlreadyExecuted),
        8 => Some(Refusal::UnknownReservation),
        _ => Some(Refusal::TooManyReservations),
    };
    let wait = micros(reply, 2)?;
    Ok(Decision {
        allowed,
        reason,
        shard: 0,
        retry_after: matches!(
            reason,
            Some(
                Refusal::RateLimited
                    | Refusal::MaxWaitExceeded
                    | Refusal::NotReady
                    | Refusal::TooManyReservations
            )
        )
        .then_some(wait as f64 / 1e6),
        at: micros(reply, 4)?.saturating_mul(1_000),
        remaining_units: Some(micros(reply, 3)?),
        unit: token,
        sampled: false,
    })
}

fn micros(reply: &[Value], at: usize) -> Result<u64> {
    match reply.get(at) {
        Some(Value::Int(n)) => Ok((*n).max(0) as u64),
        other => Err(malformed(other)),
    }
}

fn malformed(value: Option<&Value>) -> Error {
    Error::Unavailable {
        cause: format!("the server answered the script with {value:?}"),
    }
}
