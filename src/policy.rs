//! Policy conditions: compiling and evaluating the `when` expression of a
//! policy.
//!
//! A policy is `{name, tribe, when}`; `when` is a [CEL] expression over one
//! variable, `facts`, a map from fact names to string values, and a node for
//! which it holds joins the tribe. This module only compiles and evaluates
//! those expressions:
//!
//! ```text
//! facts.os_dist == "ubuntu" && facts.storage_tier == "true"
//! int(facts.processor_count) >= 4
//! "gpu" in facts && facts.hostname.matches("^web-[0-9]+$")
//! ```
//!
//! Facts are strings: convert with `int()`, `uint()`, `double()` or `bool()`
//! before comparing numbers. Test whether a fact is set with `"name" in facts`
//! or `has(facts.name)` (both work); reading a fact that is not set is an
//! evaluation error, which callers count as "does not hold".
//!
//! Expressions may come from the network, so nothing here may panic, overflow
//! the stack or run for long, whatever the input:
//!
//! - the source is at most [`MAX_EXPRESSION_LEN`] bytes and nests brackets at
//!   most [`MAX_NESTING`] deep, checked before the parser sees it;
//! - the parser (antlr-based, deeply recursive, with very large stack frames
//!   in debug builds) runs on a helper thread with a stack of its own, under
//!   `catch_unwind`;
//! - the tree it returns is at most [`MAX_AST_DEPTH`] deep, so evaluating it
//!   has a known stack need: shallow trees are evaluated on the caller's
//!   thread, deeper ones on a helper thread with a large stack;
//! - comprehensions (`all`, `exists`, `exists_one`, `filter`, `map`) cannot
//!   be nested nor run over values a `map` built with `+`, at most
//!   [`MAX_COMPREHENSIONS`] are allowed and one `map`, and
//!   at most [`MAX_LOOP_ADDITIONS`] `+` run per element, so the work of an
//!   evaluation is at most about the size of the expression times the
//!   length of a fact times the elements of one list (a chain of `map`s
//!   could double a value at every step; a `map` building long strings
//!   that an `exists` joins again took tens of seconds). That is not
//!   nothing: a hostile `matches()` over 9 KiB joined strings ran at about
//!   4 MB/s, some 0.5 s for one comprehension over 250 facts of 1 KiB, so
//!   a policy's author can still cost each node a second or two per
//!   evaluation; nothing times an evaluation out;
//! - `matches()` takes a string literal as its pattern, compiled once, here,
//!   with a small size limit (cel's own `matches` compiles the pattern on every
//!   call with a 10 MiB limit, tens of milliseconds each for a hostile one).
//!
//! [CEL]: https://github.com/google/cel-spec

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::extractors::This;
use cel::{Context, Env, ExecutionError, ParseErrors, Program, Value};

/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 4096;

/// Deepest nesting of brackets (`(`, `[`, `{`) accepted, outside string
/// literals and comments. The CEL spec asks for at least 12.
pub const MAX_NESTING: usize = 32;

/// Deepest syntax tree accepted, counting the root as 1. Bounds the stack
/// needed to evaluate (the CEL spec asks for at least 24 operators in a row).
pub const MAX_AST_DEPTH: usize = 64;

/// Most distinct `matches()` patterns in one expression.
pub const MAX_PATTERNS: usize = 16;

/// The only variable an expression may refer to.
pub const FACTS_VAR: &str = "facts";

/// Type names that CEL resolves as identifiers, as in `type(x) == string`.
const TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// Compiled size limit of a `matches()` pattern: bounds the time to compile it
/// (well under a millisecond) and to match with it.
const PATTERN_SIZE_LIMIT: usize = 1 << 18;

/// Stack of the thread that parses. In debug builds the parser needs about
/// 250 KiB per bracket level and the tree builder ~2 KiB per operator in a row:
/// 32 brackets take ~8 MiB, a 4 KiB chain of `+` ~4 MiB. Only touched pages
/// are committed.
const COMPILE_STACK_SIZE: usize = 32 << 20;

/// Trees at most this deep are evaluated on the caller's thread. Debug builds
/// need ~40 KiB of stack per level (release ~1.5 KiB): ~650 KiB here, safe on
/// a 2 MiB thread such as a tokio worker or a test.
const INLINE_EVAL_DEPTH: usize = 16;

/// Stack of the thread that evaluates deeper trees: [`MAX_AST_DEPTH`] levels
/// take ~2.6 MiB in debug builds.
const EVAL_STACK_SIZE: usize = 16 << 20;

/// Longest error message kept, in bytes: cel's messages can print whole values.
const MAX_MESSAGE_LEN: usize = 512;

/// A validated, compiled `when` expression, cheap to clone and to share
/// between threads.
#[derive(Clone)]
pub struct Condition {
    inner: Arc<Compiled>,
}

impl fmt::Debug for Condition {
    // The source says it all; the syntax tree would flood logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

/// What [`Condition`] shares between its clones.
#[derive(Debug)]
struct Compiled {
    source: String,
    program: Program,
    /// Depth of the syntax tree, to pick where to evaluate it.
    depth: usize,
    /// The `matches()` patterns, compiled once.
    patterns: Arc<HashMap<String, regex::Regex>>,
}

/// Start of the message of a compile that could not start its thread: a
/// passing shortage, not a property of the expression.
const NO_THREAD: &str = "cannot start the compiler thread";

#[cfg(test)]
thread_local! {
    /// Makes the next compiles on this thread fail to start their thread.
    pub(crate) static FAIL_THREAD_START: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Error compiling an expression: `line` and `column` (1-based, in characters)
/// say where, when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct PolicyError {
    /// What is wrong, without the position.
    pub message: String,
    /// Line of the error, from 1.
    pub line: Option<u32>,
    /// Column of the error on its line, from 1, counted in characters.
    pub column: Option<u32>,
}

impl PolicyError {
    /// Whether the failure says nothing about the expression (its thread
    /// could not start): callers must not remember it as the outcome.
    pub fn is_transient(&self) -> bool {
        self.message.starts_with(NO_THREAD)
    }

    /// An error with no known position.
    fn new(message: impl Into<String>) -> Self {
        PolicyError {
            message: clean_message(&message.into()),
            line: None,
            column: None,
        }
    }

    /// An error at the byte `offset` of `source`.
    fn at(message: impl Into<String>, source: &str, offset: usize) -> Self {
        let (line, column) = match line_column(source, offset) {
            Some((line, column)) => (Some(line), Some(column)),
            None => (None, None),
        };
        PolicyError {
            message: clean_message(&message.into()),
            line,
            column,
        }
    }

    fn render(&self) -> String {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                format!("line {line}, column {column}: {}", self.message)
            }
            (Some(line), None) => format!("line {line}: {}", self.message),
            _ => self.message.clone(),
        }
    }
}

/// Error evaluating an expression: a missing fact, a wrong type, a result that
/// is not a bool, or any other failure. Callers count it as "does not hold".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    /// What went wrong.
    pub message: String,
}

impl EvalError {
    fn new(message: impl Into<String>) -> Self {
        EvalError {
            message: clean_message(&message.into()),
        }
    }
}

impl Condition {
    /// Compiles and validates `when`.
    ///
    /// Fails if it is empty, longer than [`MAX_EXPRESSION_LEN`], nested deeper
    /// than [`MAX_NESTING`] brackets or [`MAX_AST_DEPTH`] tree levels, not
    /// valid CEL (with the line and column of the first error), refers to a
    /// variable other than `facts` or calls a function or method the
    /// environment lacks (with its position), nests comprehensions, uses `map` more than
    /// once, builds a message (`T{...}`), or calls `matches()` with a pattern
    /// that is not a valid string literal.
    pub fn compile(when: &str) -> Result<Condition, PolicyError> {
        Condition::compile_quoting(when).map_err(|mut e| {
            // The parser quotes pieces of what it could not read: a key
            // given as an expression would come back almost whole.
            e.message = crate::keyfile::withhold_key_pieces(&e.message, when).into_owned();
            e
        })
    }

    fn compile_quoting(when: &str) -> Result<Condition, PolicyError> {
        check_length(when)?;
        check_nesting(when)?;

        // The parser and the checks recurse, deeply in debug builds: give them a
        // stack of their own, and drop whatever is rejected there too.
        #[cfg(test)]
        if FAIL_THREAD_START.with(|f| f.get()) {
            return Err(PolicyError::new(format!("{NO_THREAD}: injected")));
        }
        let inherited = crate::blocking::inherited();
        #[cfg(test)]
        let mark = crate::blocking::mark();
        let parsed = std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("policy-compile".into())
                .stack_size(COMPILE_STACK_SIZE)
                .spawn_scoped(scope, || {
                    if let Some(take_over) = inherited {
                        take_over();
                    }
                    #[cfg(test)]
                    crate::blocking::note_mask(mark);
                    catch_unwind(|| compile_program(when)).unwrap_or_else(|_| {
                        Err(PolicyError::new("internal error: the CEL parser panicked"))
                    })
                })
                .map_err(|e| PolicyError::new(format!("{NO_THREAD}: {e}")))?;
            worker
                .join()
                .unwrap_or_else(|_| Err(PolicyError::new("internal error: the compiler failed")))
        })?;
        Ok(Condition {
            inner: Arc::new(parsed),
        })
    }

    /// The source text, as given to [`Condition::compile`].
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Evaluates the condition over `facts`.
    ///
    /// `Ok(true)` or `Ok(false)` only when the expression yields a bool; a
    /// missing fact, a wrong type, a result of another type or any other
    /// failure is an [`EvalError`].
    pub fn evaluate(&self, facts: &BTreeMap<String, String>) -> Result<bool, EvalError> {
        if self.inner.depth <= INLINE_EVAL_DEPTH {
            return self.inner.evaluate_guarded(facts);
        }
        // Deep trees need more stack than the caller may have.
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("policy-eval".into())
                .stack_size(EVAL_STACK_SIZE)
                .spawn_scoped(scope, || self.inner.evaluate_guarded(facts))
                .map_err(|e| EvalError::new(format!("cannot start the evaluation thread: {e}")))?;
            worker
                .join()
                .unwrap_or_else(|_| Err(EvalError::new("internal error: evaluation failed")))
        })
    }
}

impl Compiled {
    /// Evaluates, turning a panic inside cel into an error.
    fn evaluate_guarded(&self, facts: &BTreeMap<String, String>) -> Result<bool, EvalError> {
        catch_unwind(AssertUnwindSafe(|| self.evaluate(facts)))
            .unwrap_or_else(|_| Err(EvalError::new("internal error: CEL evaluation panicked")))
    }

    fn evaluate(&self, facts: &BTreeMap<String, String>) -> Result<bool, EvalError> {
        match self.execute(facts) {
            Ok(Value::Bool(holds)) => Ok(holds),
            Ok(other) => Err(EvalError::new(format!(
                "expression yields {}, not bool",
                other.type_of()
            ))),
            Err(error) => Err(EvalError::new(error.to_string())),
        }
    }

    /// Rejects an expression that can hold for no facts at all: one that
    /// yields something other than a bool, or names a function or variable
    /// that does not exist. Run over no facts, where a missing fact (the
    /// usual error) says nothing and is let through.
    ///
    /// Then run again with every fact the expression names set to "0", so
    /// that one yielding another type once its facts are there
    /// (`facts.rack`, `size(facts.rack)`) is refused too, and one that
    /// applies an operator to the wrong types (`facts.cores > 1`: facts are
    /// strings) with "0" and with "1" alike, an error for any values.
    fn probe(&self) -> Result<(), PolicyError> {
        let start = self.source.len() - self.source.trim_start().len();
        let not_bool = |other: Value, with: &str| {
            PolicyError::at(
                format!("expression yields {}, not bool{with}", other.type_of()),
                &self.source,
                start,
            )
        };
        let named = named_facts(&self.source);
        match catch_unwind(AssertUnwindSafe(|| self.execute(&BTreeMap::new()))) {
            Ok(Ok(Value::Bool(_))) | Err(_) => {}
            Ok(Ok(other)) => return Err(not_bool(other, "")),
            Ok(Err(ExecutionError::UndeclaredReference(name))) => {
                return Err(PolicyError::new(format!(
                    "unknown function or name '{name}'"
                )))
            }
            // Naming no fact, it fails the same way on every node: it can
            // never hold (`1 + "a"`).
            Ok(Err(e)) if named.is_empty() && is_type_error(&e) => {
                return Err(PolicyError::at(
                    clean_message(&e.to_string()),
                    &self.source,
                    start,
                ))
            }
            Ok(Err(_)) => {}
        }
        if named.is_empty() {
            return Ok(());
        }
        match catch_unwind(AssertUnwindSafe(|| self.execute(&named))) {
            Ok(Ok(other)) if !matches!(other, Value::Bool(_)) => {
                Err(not_bool(other, " (with the facts it names set to \"0\")"))
            }
            Ok(Err(e)) if is_type_error(&e) => {
                let ones = named.into_keys().map(|k| (k, "1".to_owned())).collect();
                match catch_unwind(AssertUnwindSafe(|| self.execute(&ones))) {
                    Ok(Err(again)) if is_type_error(&again) => Err(PolicyError::at(
                        format!(
                            "{} (facts are strings: compare with a quoted value, or convert with int() or double())",
                            clean_message(&e.to_string())
                        ),
                        &self.source,
                        start,
                    )),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn execute(&self, facts: &BTreeMap<String, String>) -> Result<Value, ExecutionError> {
        let mut context = Context::with_env(Arc::clone(env()));
        let facts: HashMap<String, String> = facts
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        context.add_variable_from_value(FACTS_VAR, facts);
        if !self.patterns.is_empty() {
            let patterns = Arc::clone(&self.patterns);
            context
                .add_function(
                    "matches",
                    move |This(text): This<Arc<String>>, pattern: Arc<String>| {
                        match patterns.get(pattern.as_str()) {
                            Some(regex) => Ok(regex.is_match(&text)),
                            // Compile only admits literal patterns, all in the map.
                            None => Err(ExecutionError::function_error(
                                "matches",
                                "pattern was not compiled",
                            )),
                        }
                    },
                )
                .map_err(|e| ExecutionError::function_error("matches", e.to_string()))?;
        }
        self.program.execute(&context)
    }
}

/// An error that comes from the types of the values, not the values: an
/// operator or function applied to types it does not take.
fn is_type_error(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::NoSuchOverload(_)
            | ExecutionError::ValuesNotComparable(..)
            | ExecutionError::UnsupportedBinaryOperator(..)
            | ExecutionError::UnexpectedType { .. }
            | ExecutionError::UnsupportedTargetType { .. }
            | ExecutionError::NotSupportedAsMethod { .. }
    )
}

/// Builds the process-wide tables policies use (the evaluation environment,
/// the fact-name pattern, the set of known functions) on the calling
/// thread, at a node's start. Built lazily on a compiler thread instead, a
/// `fork()` made meanwhile (a prefork server forking its workers) left the
/// child a table marked as being built by a thread it does not have: every
/// policy compile there waited for ever.
pub(crate) fn warm_up() {
    // A flag, not a `Once`: a `Once` caught mid-call by a fork would hang
    // the child's start the same way.
    static WARM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if WARM.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let _ = env();
    // A whole policy, compiled and evaluated: the expression library's
    // own lazy tables too.
    if let Ok(cond) =
        Condition::compile(r#"has(facts.k) && size(facts.k) > 0 && facts.k.matches("^v")"#)
    {
        let _ = cond.evaluate(&BTreeMap::from([("k".to_string(), "v".to_string())]));
    }
    WARM.store(true, std::sync::atomic::Ordering::Release);
}

/// The environment expressions are evaluated in: the standard library, without
/// `optional` (its syntax is off too).
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::default().with_optional_support(false).with_stdlib()))
}

/// Parses and validates `source`; runs on the compiler thread.
fn compile_program(source: &str) -> Result<Compiled, PolicyError> {
    let program = Program::compile(source).map_err(|e| parse_error(source, e))?;
    let (depth, patterns) = {
        let checked = check_tree(source, &program)?;
        // `references()` over-reports (comprehension variables count as
        // variables), so `check_tree` scopes names itself; this is a cross-check.
        let references = program.references();
        if let Some(name) = references.variables().into_iter().find(|name| {
            *name != FACTS_VAR && !checked.bound.contains(*name) && !TYPE_NAMES.contains(name)
        }) {
            return Err(PolicyError::new(format!(
                "unknown variable '{name}': only '{FACTS_VAR}' is available"
            )));
        }
        (checked.depth, checked.patterns)
    };
    let compiled = Compiled {
        source: source.to_owned(),
        program,
        depth,
        patterns: Arc::new(patterns),
    };
    compiled.probe()?;
    Ok(compiled)
}

/// Whether `call` compares a fact for equality with a number, a bool or
/// null (`facts.cores == 2`, `facts.ssd != true`, `facts.cores in [2, 4]`):
/// CEL allows it, but facts are strings, so it holds for no node (or, with
/// `!=`, for every one) and no evaluation ever reports why. Read from the
/// tree: the same text in a comment or a string is no comparison.
fn compares_fact_with_non_string(call: &cel::common::ast::CallExpr) -> bool {
    let is_fact = |e: &IdedExpr| match &e.expr {
        Expr::Select(select) => {
            !select.test && matches!(&select.operand.expr, Expr::Ident(n) if n == FACTS_VAR)
        }
        Expr::Call(index) if index.func_name == operators::INDEX && index.args.len() == 2 => {
            matches!(&index.args[0].expr, Expr::Ident(n) if n == FACTS_VAR)
                && matches!(&index.args[1].expr, Expr::Literal(LiteralValue::String(_)))
        }
        _ => false,
    };
    let not_a_string = |e: &IdedExpr| {
        let e = match &e.expr {
            Expr::Call(neg) if neg.func_name == operators::NEGATE && neg.args.len() == 1 => {
                &neg.args[0]
            }
            _ => e,
        };
        matches!(
            &e.expr,
            Expr::Literal(
                LiteralValue::Int(_)
                    | LiteralValue::UInt(_)
                    | LiteralValue::Double(_)
                    | LiteralValue::Boolean(_)
                    | LiteralValue::Null
            )
        )
    };
    match (call.func_name.as_str(), call.args.as_slice()) {
        (operators::EQUALS | operators::NOT_EQUALS, [a, b]) => {
            (is_fact(a) && not_a_string(b)) || (not_a_string(a) && is_fact(b))
        }
        (operators::IN, [a, b]) => {
            is_fact(a)
                && matches!(&b.expr, Expr::List(list) if list.elements.iter().any(not_a_string))
        }
        _ => false,
    }
}

/// The names of the facts a policy expression names (`facts.x`,
/// `facts["x"]`, `facts['x']`). A name inside a string literal counts too.
pub fn fact_names(source: &str) -> std::collections::BTreeSet<String> {
    named_facts(source).into_keys().collect()
}

/// The facts `source` names, each set to "0": a sample for
/// [`Compiled::probe`].
fn named_facts(source: &str) -> BTreeMap<String, String> {
    // Built per call, not shared: a shared regex keeps its scratch space in
    // a pool behind a lock, which a `fork()` could catch held (a compile is
    // rare, and the pattern small).
    let Ok(named) = regex::Regex::new(
        r#"\bfacts\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*(?:"([^"\\]*)"|'([^'\\]*)')\s*\])"#,
    ) else {
        return BTreeMap::new();
    };
    named
        .captures_iter(source)
        .filter_map(|c| c.get(1).or_else(|| c.get(2)).or_else(|| c.get(3)))
        .map(|m| (m.as_str().to_owned(), "0".to_owned()))
        .collect()
}

/// Turns cel's parse errors into one [`PolicyError`], positioned at the first
/// error that has a position.
fn parse_error(source: &str, errors: ParseErrors) -> PolicyError {
    let count = errors.errors.len();
    let first = errors
        .errors
        .iter()
        .find(|e| e.pos.0 > 0 && e.pos.1 > 0)
        .or_else(|| errors.errors.first());
    let Some(first) = first else {
        return PolicyError::new("invalid expression");
    };
    let mut message = if first.msg.contains("Recursion limit of") {
        // Reported as `Syntax error: OtherError(ParseError { .. })`.
        "expression nests too deeply (parser recursion limit)".to_owned()
    } else if first.msg == "UNKNOWN" {
        match &first.source {
            Some(source) => source.to_string(),
            None => "invalid expression".to_owned(),
        }
    } else {
        first
            .msg
            .strip_prefix("Syntax error: ")
            .unwrap_or(&first.msg)
            .to_owned()
    };
    if count > 1 {
        message.push_str(&format!(" (and {} more errors)", count - 1));
    }
    let mut error = PolicyError::new(message);
    // cel says (0, 0) when it does not know; lines past the end are not trusted.
    let lines = source.lines().count().max(1);
    if let (Ok(line @ 1..), Ok(column @ 1..)) =
        (u32::try_from(first.pos.0), u32::try_from(first.pos.1))
    {
        if line as usize <= lines {
            error.line = Some(line);
            error.column = Some(column);
        }
    }
    error
}

/// Rejects an empty expression, one longer than [`MAX_EXPRESSION_LEN`] or
/// one holding a control character other than a tab or a line break
/// (shown raw by `tribe policy ls`, it would drive the operator's
/// terminal): the cheap checks, which need no parser (and no thread).
pub fn check_length(when: &str) -> Result<(), PolicyError> {
    if when.trim().is_empty() {
        return Err(PolicyError::at("empty expression", when, 0));
    }
    if when.len() > MAX_EXPRESSION_LEN {
        return Err(PolicyError::new(format!(
            "expression is {} bytes long, longer than the limit of {MAX_EXPRESSION_LEN}",
            when.len()
        )));
    }
    if let Some((at, c)) = when
        .char_indices()
        .find(|&(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(PolicyError::at(
            format!("control character U+{:04X} in the expression", u32::from(c)),
            when,
            at,
        ));
    }
    Ok(())
}

/// Rejects brackets nested deeper than [`MAX_NESTING`], before the parser
/// recurses into them. Skips string literals and `//` comments; works on
/// bytes, as every delimiter is ASCII.
fn check_nesting(source: &str) -> Result<(), PolicyError> {
    let bytes = source.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(PolicyError::at(
                        format!("brackets nested deeper than {MAX_NESTING}"),
                        source,
                        i,
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' | b'\'' => {
                i = skip_string(bytes, i);
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The index just past the string literal whose opening quote is at `start`,
/// or the end of the input if it is not closed.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let raw = is_raw_prefix(&bytes[..start]);
    let delimiter_len = if bytes[start..].starts_with(&[quote; 3]) {
        3
    } else {
        1
    };
    let mut i = start + delimiter_len;
    while i < bytes.len() {
        if !raw && bytes[i] == b'\\' {
            i += 2;
        } else if bytes[i..].starts_with(&[quote; 3][..delimiter_len]) {
            return i + delimiter_len;
        } else {
            i += 1;
        }
    }
    bytes.len()
}

/// Whether the literal whose quote follows `before` is raw: prefixed by `r`,
/// `R`, or one of those with `b`/`B`, as a token of its own.
fn is_raw_prefix(before: &[u8]) -> bool {
    let prefix_len = before
        .iter()
        .rev()
        .take_while(|b| matches!(b, b'r' | b'R' | b'b' | b'B'))
        .count();
    if prefix_len == 0 || prefix_len > 2 {
        return false;
    }
    let prefix = &before[before.len() - prefix_len..];
    let standalone = before.len() == prefix_len || {
        let b = before[before.len() - prefix_len - 1];
        !(b.is_ascii_alphanumeric() || b == b'_')
    };
    standalone && prefix.iter().any(|b| matches!(b, b'r' | b'R'))
}

/// What [`check_tree`] learns about a valid tree.
struct Checked<'a> {
    depth: usize,
    /// Names bound by comprehensions, anywhere in the tree.
    bound: HashSet<&'a str>,
    patterns: HashMap<String, regex::Regex>,
    /// Functions called by name (operators aside): the call, and whether
    /// it is a member call (`x.f()`).
    calls: Vec<(&'a IdedExpr, &'a str, bool)>,
}

/// One node still to visit in [`check_tree`].
struct Pending<'a> {
    expr: &'a IdedExpr,
    depth: usize,
    /// Innermost comprehension scope, an index into the scope list.
    scope: Option<usize>,
    /// Where the node runs: once, in a comprehension's range, or once per
    /// iteration of a comprehension.
    place: Place,
}

/// Where a node of the tree runs (see [`Pending`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Once,
    /// In a comprehension's range: a `map` there that builds values would
    /// multiply the outer one's work as nesting would (one building long
    /// strings that an `exists` joins again took tens of seconds).
    Range,
    /// Once per iteration.
    Loop,
    /// Once per iteration of a `map` in a comprehension's range.
    RangedMap,
}

/// Most comprehensions in one expression: each may run a `matches()` over
/// long joined strings once per fact (30 of them took 15 s over 250 facts
/// of 1 KiB).
pub const MAX_COMPREHENSIONS: usize = 4;

/// Most `+` run once per iteration of a comprehension: each may copy a
/// string of up to a fact's length times the terms before it, once per
/// element of a list of up to thousands.
pub const MAX_LOOP_ADDITIONS: usize = 8;

/// Validates the tree without recursing (it may be thousands of levels deep):
/// its depth, the names it uses, its comprehensions and its patterns.
fn check_tree<'a>(source: &str, program: &'a Program) -> Result<Checked<'a>, PolicyError> {
    let error_at =
        |message: String, expr: &IdedExpr| match program.source_info().offset_for(expr.id) {
            Some((start, _)) => PolicyError::at(message, source, start as usize),
            None => PolicyError::new(message),
        };
    // Comprehension scopes: (enclosing scope, bound name).
    let mut scopes: Vec<(Option<usize>, &'a str)> = Vec::new();
    let mut checked = Checked {
        depth: 0,
        bound: Default::default(),
        patterns: HashMap::new(),
        calls: Vec::new(),
    };
    let mut maps = 0;
    let mut comprehensions = 0;
    // By comprehension (its innermost scope: they do not nest).
    let mut loop_additions: HashMap<Option<usize>, usize> = HashMap::new();
    let mut stack = vec![Pending {
        expr: program.expression(),
        depth: 1,
        scope: None,
        place: Place::Once,
    }];
    while let Some(Pending {
        expr,
        depth,
        scope,
        place,
    }) = stack.pop()
    {
        if depth > MAX_AST_DEPTH {
            return Err(error_at(
                format!("expression nests too deeply (more than {MAX_AST_DEPTH} levels)"),
                expr,
            ));
        }
        checked.depth = checked.depth.max(depth);
        let mut push = |child: &'a IdedExpr, scope: Option<usize>, place: Place| {
            stack.push(Pending {
                expr: child,
                depth: depth + 1,
                scope,
                place,
            })
        };
        match &expr.expr {
            Expr::Unspecified | Expr::Literal(_) => {}
            Expr::Ident(name) => {
                let mut bound = false;
                let mut current = scope;
                while let Some(index) = current {
                    let (parent, bound_name) = scopes[index];
                    if bound_name == name {
                        bound = true;
                        break;
                    }
                    current = parent;
                }
                if !(bound || name == FACTS_VAR || TYPE_NAMES.contains(&name.as_str())) {
                    return Err(error_at(
                        format!("unknown variable '{name}': only '{FACTS_VAR}' is available"),
                        expr,
                    ));
                }
            }
            Expr::Select(select) => push(&select.operand, scope, place),
            Expr::Call(call) => {
                if compares_fact_with_non_string(call) {
                    return Err(error_at(
                        "a fact compared with a number, a bool or null holds for no value: facts \
                         are strings (compare with a string, or convert: int(facts.x) == 2)"
                            .to_owned(),
                        expr,
                    ));
                }
                if call.func_name == "matches" {
                    let pattern = if call.target.is_some() {
                        call.args.first()
                    } else {
                        call.args.get(1)
                    };
                    if let Some(pattern) = pattern {
                        compile_pattern(&mut checked.patterns, pattern)
                            .map_err(|message| error_at(message, pattern))?;
                    }
                }
                if is_identifier(&call.func_name) {
                    checked
                        .calls
                        .push((expr, &call.func_name, call.target.is_some()));
                }
                // A macro's own step (`@result + [x]`) builds its list once.
                let accumulates = matches!(
                    call.args.first().map(|a| &a.expr),
                    Some(Expr::Ident(name)) if name.starts_with('@')
                );
                if call.func_name == operators::ADD && !accumulates {
                    if place == Place::RangedMap {
                        return Err(error_at(
                            "a map() whose result another comprehension runs over cannot build \
                             values with '+'"
                                .to_owned(),
                            expr,
                        ));
                    }
                    if place == Place::Loop {
                        let count = loop_additions.entry(scope).or_default();
                        *count += 1;
                        if *count > MAX_LOOP_ADDITIONS {
                            return Err(error_at(
                                format!(
                                    "more than {MAX_LOOP_ADDITIONS} '+' run for each element \
                                     of a comprehension"
                                ),
                                expr,
                            ));
                        }
                    }
                }
                if let Some(target) = &call.target {
                    push(target, scope, place);
                }
                for arg in &call.args {
                    push(arg, scope, place);
                }
            }
            Expr::List(list) => {
                for element in &list.elements {
                    push(element, scope, place);
                }
            }
            Expr::Map(map) => {
                for entry in &map.entries {
                    match &entry.expr {
                        EntryExpr::MapEntry(entry) => {
                            push(&entry.key, scope, place);
                            push(&entry.value, scope, place);
                        }
                        EntryExpr::StructField(field) => push(&field.value, scope, place),
                    }
                }
            }
            Expr::Struct(message) => {
                return Err(error_at(
                    format!(
                        "message construction ('{}{{...}}') is not supported",
                        message.type_name
                    ),
                    expr,
                ));
            }
            Expr::Comprehension(comprehension) => {
                if matches!(place, Place::Loop | Place::RangedMap) {
                    return Err(error_at(
                        "comprehensions (all, exists, exists_one, filter, map) cannot be nested"
                            .to_owned(),
                        expr,
                    ));
                }
                comprehensions += 1;
                if comprehensions > MAX_COMPREHENSIONS {
                    return Err(error_at(
                        format!("more than {MAX_COMPREHENSIONS} comprehensions (all, exists, exists_one, filter, map)"),
                        expr,
                    ));
                }
                let body = if place == Place::Range && is_map(comprehension) {
                    Place::RangedMap
                } else {
                    Place::Loop
                };
                if is_map(comprehension) {
                    maps += 1;
                    if maps > 1 {
                        return Err(error_at(
                            "map() may be used only once in an expression".to_owned(),
                            expr,
                        ));
                    }
                }
                // Evaluated once, outside the loop's scope.
                push(&comprehension.iter_range, scope, Place::Range);
                push(&comprehension.accu_init, scope, Place::Once);
                let mut inner = scope;
                let names = [
                    Some(comprehension.accu_var.as_str()),
                    Some(comprehension.iter_var.as_str()),
                    comprehension.iter_var2.as_deref(),
                ];
                for name in names.into_iter().flatten() {
                    scopes.push((inner, name));
                    checked.bound.insert(name);
                    inner = Some(scopes.len() - 1);
                }
                push(&comprehension.loop_cond, inner, body);
                push(&comprehension.loop_step, inner, body);
                push(&comprehension.result, inner, Place::Once);
            }
        }
    }
    for &(call, name, member) in &checked.calls {
        if !function_exists(name, member) {
            let form = if member { "method" } else { "function" };
            return Err(error_at(format!("unknown {form} '{name}'"), call));
        }
    }
    Ok(checked)
}

/// Whether `name` is a plain name (operators are spelled with symbols).
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a call of `name` (as a method when `member`) reaches a function
/// of the evaluation environment: asked of cel itself, by evaluating the
/// bare call, which fails as an undeclared reference only when no function
/// of that name exists in that form. Asked anew each time (a compile is
/// rare): a process-wide cache behind a lock, caught held by a `fork()`,
/// hung every later compile in the child.
fn function_exists(name: &str, member: bool) -> bool {
    if name == "matches" {
        return true;
    }
    let source = if member {
        format!("''.{name}()")
    } else {
        format!("{name}()")
    };
    let Ok(program) = Program::compile(&source) else {
        // Not callable this way at all (a reserved word).
        return false;
    };
    let context = Context::with_env(Arc::clone(env()));
    !matches!(
        catch_unwind(AssertUnwindSafe(|| program.execute(&context))),
        Ok(Err(ExecutionError::UndeclaredReference(ref missing))) if missing.as_str() == name
    )
}

/// Whether `comprehension` is a `map()`: it builds a list of values computed
/// from the elements, where `filter()` only keeps the elements themselves.
fn is_map(comprehension: &cel::common::ast::ComprehensionExpr) -> bool {
    if !matches!(comprehension.accu_init.expr, Expr::List(_)) {
        return false;
    }
    // `filter` steps are `cond ? @result + [x] : @result`, `map` steps
    // `@result + [f(x)]`, possibly under the same conditional.
    let mut step = &comprehension.loop_step;
    if let Expr::Call(call) = &step.expr {
        if call.func_name == operators::CONDITIONAL && call.args.len() == 3 {
            step = &call.args[1];
        }
    }
    let appended = match &step.expr {
        Expr::Call(call) if call.func_name == operators::ADD && call.args.len() == 2 => {
            match &call.args[1].expr {
                Expr::List(list) if list.elements.len() == 1 => Some(&list.elements[0]),
                _ => None,
            }
        }
        _ => None,
    };
    !matches!(appended.map(|e| &e.expr), Some(Expr::Ident(name)) if *name == comprehension.iter_var)
}

/// Compiles the `matches()` pattern `pattern`, which must be a string literal.
fn compile_pattern(
    patterns: &mut HashMap<String, regex::Regex>,
    pattern: &IdedExpr,
) -> Result<(), String> {
    let Expr::Literal(LiteralValue::String(text)) = &pattern.expr else {
        return Err("the pattern of matches() must be a string literal".to_owned());
    };
    let text = text.inner();
    if patterns.contains_key(text) {
        return Ok(());
    }
    if patterns.len() >= MAX_PATTERNS {
        return Err(format!(
            "more than {MAX_PATTERNS} distinct matches() patterns"
        ));
    }
    let regex = regex::RegexBuilder::new(text)
        .size_limit(PATTERN_SIZE_LIMIT)
        .dfa_size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid matches() pattern: {e}"))?;
    patterns.insert(text.to_owned(), regex);
    Ok(())
}

/// The 1-based line and column, in characters, of the byte `offset` of
/// `source`; `None` if it is not a character boundary within it.
fn line_column(source: &str, offset: usize) -> Option<(u32, u32)> {
    let before = source.get(..offset)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    Some((u32::try_from(line).ok()?, u32::try_from(column).ok()?))
}

/// Makes a message safe to log: control characters escaped, length capped.
fn clean_message(message: &str) -> String {
    let mut clean = String::with_capacity(message.len().min(MAX_MESSAGE_LEN));
    for c in message.chars() {
        if clean.len() >= MAX_MESSAGE_LEN {
            clean.push('…');
            break;
        }
        if c.is_control() {
            clean.extend(c.escape_default());
        } else {
            clean.push(c);
        }
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ubuntu_node() -> BTreeMap<String, String> {
        facts(&[
            ("os_dist", "ubuntu"),
            ("storage_tier", "true"),
            ("processor_count", "8"),
            ("hostname", "web-12"),
        ])
    }

    fn eval(when: &str, facts: &BTreeMap<String, String>) -> Result<bool, EvalError> {
        Condition::compile(when)
            .unwrap_or_else(|e| panic!("{when:?} should compile: {e}"))
            .evaluate(facts)
    }

    #[test]
    fn ubuntu_policy_holds_or_not() {
        let when = r#"facts.os_dist == "ubuntu" && facts.storage_tier == "true""#;
        let condition = Condition::compile(when).unwrap();
        assert_eq!(condition.source(), when);
        assert_eq!(condition.evaluate(&ubuntu_node()), Ok(true));
        let debian = facts(&[("os_dist", "debian"), ("storage_tier", "true")]);
        assert_eq!(condition.evaluate(&debian), Ok(false));
    }

    #[test]
    fn a_type_error_naming_no_fact_is_refused_at_once() {
        for when in [r#"1 + "a""#, r#""x" < 2"#] {
            assert!(Condition::compile(when).is_err(), "{when} compiled");
        }
        // Only its facts decide these: they compile.
        for when in [
            r#"int(facts["n"]) + 1 > 2"#,
            r#"has(facts.rack) && facts.rack == "r1""#,
            "1 / 0 == 1",
        ] {
            assert!(Condition::compile(when).is_ok(), "{when} refused");
        }
    }

    #[test]
    fn missing_fact_is_an_error() {
        let error = eval(
            r#"facts.storage_tier == "true""#,
            &facts(&[("os_dist", "ubuntu")]),
        )
        .unwrap_err();
        assert!(error.message.contains("storage_tier"), "{error}");
    }

    #[test]
    fn non_bool_result_is_an_error() {
        // A bool for the probe's "0", a string for 4.
        let error = eval(
            r#"int(facts.processor_count) > 0 ? "many" : true"#,
            &ubuntu_node(),
        )
        .unwrap_err();
        assert_eq!(error.message, "expression yields string, not bool");
    }

    #[test]
    fn what_can_hold_for_no_facts_is_refused_at_compile() {
        for (when, says) in [
            ("1 + 1", "yields int"),
            (r#""text""#, "yields string"),
            ("foo(facts)", "unknown function 'foo'"),
            // Not bools once the facts they name are there.
            ("facts.rack", "yields string"),
            (r#"facts.rack + "x""#, "yields string"),
            ("size(facts.rack)", "yields int"),
            (r#"int(facts['rack']) > 2 ? "a" : "b""#, "yields string"),
            ("", "empty expression"),
            ("facts.x == \"\u{1b}[31m\"", "control character U+001B"),
            (
                r#"facts.rack == "r1" || nope(1)"#,
                "unknown function 'nope'",
            ),
            // Wrong types once the facts are there, whatever their values.
            ("facts.processor_count > 1", "facts are strings"),
            (r#"facts.a - "1" == """#, "facts are strings"),
        ] {
            let e = Condition::compile(when).expect_err(when);
            assert!(e.message.contains(says), "{when}: {e}");
        }
        // A missing fact says nothing at compile time, nor an error that
        // comes from some values only.
        for when in [
            r#"facts.rack == "r1""#,
            r#"facts.os.startsWith("deb")"#,
            "true",
            "int(facts.a) / int(facts.b) > 1",
            "int(facts.cores) > 1",
        ] {
            assert!(Condition::compile(when).is_ok(), "{when}");
        }
    }

    #[test]
    fn wrong_type_is_an_error() {
        // Facts are strings: comparing with a number needs a conversion
        // (refused at compile time, an error for any values).
        assert!(Condition::compile("facts.processor_count >= 2").is_err());
        assert!(eval("int(facts.os_dist) >= 2", &ubuntu_node()).is_err());
        assert!(eval("1 / 0 == 1", &ubuntu_node()).is_err());
    }

    #[test]
    fn a_fact_compared_for_equality_with_a_number_is_refused() {
        // Facts are strings: these would hold for no node, or all.
        for bad in [
            "facts.processor_count == 2",
            "2 == facts.processor_count",
            "facts['ssd'] != true",
            "facts.processor_count in [1, 2, 4]",
            "facts.rack == null",
            "facts.os_dist == \"ubuntu\" && facts.cores == -1.5",
        ] {
            let err = Condition::compile(bad).expect_err(bad);
            assert!(err.message.contains("facts are strings"), "{bad}: {err}");
            assert!(err.line.is_some() && err.column.is_some(), "{bad}: {err:?}");
        }
        let err =
            Condition::compile("facts.os_dist == \"ubuntu\" &&\n  facts.cores == 2").unwrap_err();
        // At the comparison.
        assert_eq!((err.line, err.column), (Some(2), Some(15)), "{err:?}");
        for good in [
            // The same text in a comment or a string is no comparison.
            "int(facts.processor_count) == 2 // was: facts.processor_count == 2",
            "facts.os_dist == \"facts.idx == 1\"",
            "facts.processor_count == \"2\"",
            "\"2\" == facts.processor_count",
            "int(facts.processor_count) == 2",
            "size(facts.rack) == 2",
            "facts.rack.size() == 2",
            "facts.rack in [\"r1\", \"r2\"]",
            "has(facts.ssd) == true",
        ] {
            assert!(Condition::compile(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn numeric_facts_convert() {
        assert_eq!(
            eval("int(facts.processor_count) >= 2", &ubuntu_node()),
            Ok(true)
        );
        assert_eq!(
            eval("int(facts.processor_count) >= 16", &ubuntu_node()),
            Ok(false)
        );
        let few = facts(&[("processor_count", "1")]);
        assert_eq!(eval("int(facts.processor_count) >= 2", &few), Ok(false));
    }

    #[test]
    fn existence_checks() {
        let node = ubuntu_node();
        // Both forms work.
        assert_eq!(eval(r#""os_dist" in facts"#, &node), Ok(true));
        assert_eq!(eval(r#""gpu" in facts"#, &node), Ok(false));
        assert_eq!(eval("has(facts.os_dist)", &node), Ok(true));
        assert_eq!(eval("has(facts.gpu)", &node), Ok(false));
        // Guards a read of a fact that may be missing.
        assert_eq!(
            eval(r#"has(facts.gpu) && facts.gpu == "a100""#, &node),
            Ok(false)
        );
        assert_eq!(
            eval(r#"!("gpu" in facts) || facts.gpu == "a100""#, &node),
            Ok(true)
        );
        // Keys that are not identifiers.
        let dashed = facts(&[("kernel-version", "6.1")]);
        assert_eq!(
            eval(r#"facts["kernel-version"] == "6.1""#, &dashed),
            Ok(true)
        );
    }

    #[test]
    fn comprehensions_over_facts() {
        let node = ubuntu_node();
        assert_eq!(
            eval(r#"facts.exists(k, k.startsWith("host"))"#, &node),
            Ok(true)
        );
        assert_eq!(eval(r#"facts.all(k, facts[k] != "")"#, &node), Ok(true));
        assert_eq!(
            eval(r#"facts.filter(k, k.endsWith("count")).size() == 1"#, &node),
            Ok(true)
        );
        assert_eq!(
            eval(r#"facts.map(k, k.size()).exists(n, n > 10)"#, &node),
            Ok(true)
        );
        assert_eq!(
            eval(r#"facts.exists_one(k, facts[k] == "true")"#, &node),
            Ok(true)
        );
    }

    #[test]
    fn matches_takes_literal_patterns() {
        let node = ubuntu_node();
        assert_eq!(
            eval(r#"facts.hostname.matches("^web-[0-9]+$")"#, &node),
            Ok(true)
        );
        assert_eq!(eval(r#"matches(facts.hostname, "^db-")"#, &node), Ok(false));
        assert_eq!(
            eval(r#"facts.exists(k, k.matches("^os_"))"#, &node),
            Ok(true)
        );
        let error = Condition::compile("facts.hostname.matches(facts.os_dist)").unwrap_err();
        assert!(error.message.contains("string literal"), "{error}");
        let error = Condition::compile(r#"facts.hostname.matches("(")"#).unwrap_err();
        assert!(
            error.message.contains("invalid matches() pattern"),
            "{error}"
        );
        // Too big to compile cheaply.
        assert!(Condition::compile(r#"facts.hostname.matches("\\w{1000}")"#).is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS)
            .map(|i| format!(r#"facts.hostname.matches("{i}")"#))
            .collect();
        assert!(Condition::compile(&many.join(" || ")).is_err());
    }

    #[test]
    fn type_names_resolve() {
        assert_eq!(
            eval("type(facts.os_dist) == string", &ubuntu_node()),
            Ok(true)
        );
    }

    /// A key given as an expression does not come back in the error, whole
    /// or in pieces (the parser quotes what it could not read).
    #[test]
    fn a_key_given_as_an_expression_is_withheld_from_the_error() {
        for _ in 0..20 {
            let key = crate::crypto::SecretKey::generate().to_base64();
            // As printed, without its `=`, split over two lines or words.
            for given in [
                key.clone(),
                key[..43].to_string(),
                format!("{}\n{}", &key[..22], &key[22..]),
                format!("{} {}", &key[..10], &key[10..43]),
            ] {
                let err = Condition::compile(&given).unwrap_err().to_string();
                for piece in key.as_bytes().windows(6) {
                    let piece = std::str::from_utf8(piece).unwrap();
                    assert!(!err.contains(piece), "{piece:?} of the key in {err:?}");
                }
            }
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let error = Condition::compile(r#"facts.os_dist == "ubuntu" &&"#).unwrap_err();
        // At the end of input: one past the last character.
        assert_eq!((error.line, error.column), (Some(1), Some(29)), "{error}");
        let error = Condition::compile("facts.os_dist = 'x'").unwrap_err();
        assert_eq!((error.line, error.column), (Some(1), Some(15)), "{error}");
        assert!(
            error.to_string().starts_with("line 1, column 15: "),
            "{error}"
        );
        assert!(!error.message.starts_with("Syntax error"), "{error}");
    }

    #[test]
    fn syntax_error_on_second_line() {
        let error =
            Condition::compile("facts.os_dist == \"ubuntu\" &&\n  facts.x == )").unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(14)), "{error}");
        assert!(
            error.to_string().starts_with("line 2, column 14: "),
            "{error}"
        );
        // Columns count characters, not bytes.
        let error = Condition::compile("\"é💖\" == \n\"é\" + )").unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(7)), "{error}");
    }

    #[test]
    fn unknown_variables_are_refused() {
        let error = Condition::compile("foo.bar == 1").unwrap_err();
        assert!(error.message.contains("'foo'"), "{error}");
        assert_eq!((error.line, error.column), (Some(1), Some(1)), "{error}");
        let error = Condition::compile("facts.a == 'x' &&\n  bar").unwrap_err();
        assert_eq!((error.line, error.column), (Some(2), Some(3)), "{error}");
        // A comprehension variable is only bound inside its comprehension.
        assert!(Condition::compile("facts.exists(k, k == 'a')").is_ok());
        assert!(Condition::compile("facts.exists(k, k == 'a') || k == 'b'").is_err());
        assert!(Condition::compile("optional.of(1) == 1").is_err());
        assert!(Condition::compile("Foo{a: 1} == 1").is_err());
    }

    #[test]
    fn unknown_functions_and_methods_are_refused_with_a_position() {
        let error = Condition::compile("facts.rack.startWith(\"r\")").unwrap_err();
        assert!(error.message.contains("method 'startWith'"), "{error}");
        assert_eq!(error.line, Some(1), "{error}");
        assert!(error.column.is_some(), "{error}");
        let error = Condition::compile("\"rack\" in facts &&\n  nosuchfn(facts.rack)").unwrap_err();
        assert!(error.message.contains("function 'nosuchfn'"), "{error}");
        assert_eq!((error.line, error.column), (Some(2), Some(11)), "{error}");
        // Behind a short circuit too: never evaluated over these facts.
        assert!(Condition::compile("facts.a == 'x' && facts.b.nope()").is_err());
        // Functions and methods of the standard library, in their forms.
        for ok in [
            "facts.rack.startsWith('r')",
            "facts.rack.endsWith('1') || facts.rack.contains('x')",
            "size(facts.rack) > 1 && facts.rack.size() > 1",
            "int(facts.cpus) >= 4 && uint(facts.cpus) > 1u && double(facts.load) < 2.0",
            "bool(facts.ssd) && string(1) == '1' && type(facts) == map",
            "has(facts.rack) && facts.rack.matches('^r[0-9]$')",
            "facts.all(k, k.size() > 0) && facts.exists(k, k == 'a')",
            "dyn(facts.rack) == 'r1' && bytes(facts.rack) == b'r1'",
        ] {
            Condition::compile(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn empty_and_too_long_are_refused() {
        assert!(Condition::compile("").is_err());
        assert!(Condition::compile(" \n\t").is_err());
        let long = format!("facts.a == '{}'", "x".repeat(MAX_EXPRESSION_LEN));
        let error = Condition::compile(&long).unwrap_err();
        assert!(error.message.contains("longer than"), "{error}");
        let just_fits = format!("'{}' != ''", "x".repeat(MAX_EXPRESSION_LEN - 8));
        assert_eq!(just_fits.len(), MAX_EXPRESSION_LEN);
        assert_eq!(eval(&just_fits, &BTreeMap::new()), Ok(true));
    }

    #[test]
    fn deep_nesting_is_refused_cleanly() {
        for (open, close) in [("(", ")"), ("[", "]"), ("int(", ")"), ("{1:", "}")] {
            let n = MAX_NESTING + 1;
            let deep = format!("{}1{}", open.repeat(n), close.repeat(n));
            let error = Condition::compile(&deep).unwrap_err();
            assert!(error.message.contains("nested deeper"), "{error}");
            let deep = open.repeat(4000 / open.len());
            assert!(Condition::compile(&deep).is_err());
        }
        // Just within the limit: the parser copes (on its own stack), and the
        // tree is either accepted or refused as too deep, never a crash.
        for (open, close) in [("(", ")"), ("[", "]"), ("int(", ")"), ("{1:", "}")] {
            let n = MAX_NESTING;
            let _ = Condition::compile(&format!("{}1{}", open.repeat(n), close.repeat(n)));
            let chain = "+1".repeat(1000);
            let _ = Condition::compile(&format!("{}1{chain}{}", open.repeat(n), close.repeat(n)));
        }
        let ok = format!("{}true{}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert_eq!(eval(&ok, &BTreeMap::new()), Ok(true));
        // Brackets in strings and comments do not count.
        let quoted = format!("'{}' != '' // {}", "(".repeat(100), "[".repeat(100));
        assert_eq!(eval(&quoted, &BTreeMap::new()), Ok(true));
        let raw = format!(r#"r"\" + '{}' != '' "#, "(".repeat(100));
        assert_eq!(eval(&raw, &BTreeMap::new()), Ok(true));
    }

    #[test]
    fn long_chains_are_refused_or_evaluated() {
        // 4 KiB of `1+1+...` parses to a tree ~2000 deep.
        let chain = format!("1{} > 0", "+1".repeat(2000));
        let error = Condition::compile(&chain).unwrap_err();
        assert!(error.message.contains("nests too deeply"), "{error}");
        // Ternaries nest without brackets; the parser's own limit stops them.
        let ternary = format!("{}true", "true ? true : ".repeat(200));
        assert!(Condition::compile(&ternary).is_err());
        // Logical operators build balanced trees: long chains are fine.
        let ors = format!("false{}", " || facts.x == 'y'".repeat(200));
        assert_eq!(eval(&ors, &facts(&[("x", "y")])), Ok(true));
        let nots = format!("{}true", "!".repeat(4000));
        assert_eq!(eval(&nots, &BTreeMap::new()), Ok(true));
    }

    #[test]
    fn deepest_trees_evaluate() {
        // Trees just within MAX_AST_DEPTH, evaluated on the helper thread.
        let node = ubuntu_node();
        for (head, step, tail) in [
            ("1", "+1", " > 0"),
            ("'a'", "+'a'", " != ''"),
            ("[[1]]", "+[[1]]", " != []"),
            ("facts.filter(k, true)", " + ['a']", " != []"),
        ] {
            let mut n = MAX_AST_DEPTH;
            let condition = loop {
                match Condition::compile(&format!("{head}{}{tail}", step.repeat(n))) {
                    Ok(condition) => break condition,
                    Err(_) => n -= 1,
                }
            };
            assert!(condition.inner.depth > INLINE_EVAL_DEPTH);
            assert!(condition.evaluate(&node).is_ok(), "{}", condition.source());
        }
    }

    #[test]
    fn inline_evaluation_fits_a_small_stack() {
        // Trees evaluated on the caller's thread fit in 1 MiB, debug build
        // included, half a tokio worker's stack.
        let mut conditions = Vec::new();
        for (head, step, tail) in [
            ("1", "+1", " > 0"),
            ("facts.a", "+'a'", " == ''"),
            ("facts.map(k, k)", "+['a']", " != []"),
            ("[", "[", " != []"),
        ] {
            let mut n = INLINE_EVAL_DEPTH;
            let source = |n: usize| {
                if head == "[" {
                    format!("{}1{}{tail}", "[".repeat(n), "]".repeat(n))
                } else {
                    format!("{head}{}{tail}", step.repeat(n))
                }
            };
            let condition = loop {
                let condition = Condition::compile(&source(n)).unwrap();
                if condition.inner.depth <= INLINE_EVAL_DEPTH {
                    break condition;
                }
                n -= 1;
            };
            assert!(condition.inner.depth >= INLINE_EVAL_DEPTH - 2);
            conditions.push(condition);
        }
        let node = facts(&[("a", "b")]);
        std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(move || {
                for condition in &conditions {
                    let _ = condition.evaluate(&node);
                }
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn comprehensions_are_bounded() {
        let error = Condition::compile("facts.all(a, facts.all(b, a != b))").unwrap_err();
        assert!(error.message.contains("cannot be nested"), "{error}");
        assert!(Condition::compile("[1, 2].exists(x, [3].exists(y, x == y))").is_err());
        // `map` could double a value at every step.
        let doubling = format!("['ab']{}.size() > 0", ".map(s, s + s)".repeat(60));
        let error = Condition::compile(&doubling).unwrap_err();
        assert!(error.message.contains("map()"), "{error}");
        // Chains of filters only shrink.
        assert!(
            Condition::compile("facts.filter(k, k != 'a').filter(k, k != 'b').size() > 0").is_ok()
        );
        // A comprehension in the range of another runs once.
        assert!(Condition::compile("facts.filter(k, k != 'a').exists(k, k == 'b')").is_ok());
        // Not a map: each of its long results joined again in the next
        // loop took tens of seconds (a 1 KiB fact, 64 copies, 1,400 times).
        let joined = format!(
            "has(facts.v) && [{}].map(i, {}).exists(y, y + y == '')",
            vec!["0"; 1400].join(","),
            vec!["facts.v"; 64].join(" + ")
        );
        let error = Condition::compile(&joined).unwrap_err();
        assert!(error.message.contains("cannot build values"), "{error}");
        // At most MAX_LOOP_ADDITIONS `+` run per element.
        let per_element = |n: usize| {
            format!(
                "[0, 1].exists(i, {} == '')",
                vec!["facts.v"; n + 1].join(" + ")
            )
        };
        assert!(Condition::compile(&per_element(MAX_LOOP_ADDITIONS)).is_ok());
        // Counted per comprehension.
        let two = format!(
            "{} || {}",
            per_element(MAX_LOOP_ADDITIONS),
            per_element(MAX_LOOP_ADDITIONS)
        );
        assert!(Condition::compile(&two).is_ok(), "{two}");
        let error = Condition::compile(&per_element(MAX_LOOP_ADDITIONS + 1)).unwrap_err();
        assert!(error.message.contains("for each element"), "{error}");
        // At most MAX_COMPREHENSIONS in one expression.
        let many = |n: usize| vec!["facts.exists(k, k == 'a')"; n].join(" || ");
        assert!(Condition::compile(&many(MAX_COMPREHENSIONS)).is_ok());
        let error = Condition::compile(&many(MAX_COMPREHENSIONS + 1)).unwrap_err();
        assert!(error.message.contains("comprehensions"), "{error}");
        // Outside a loop, as before.
        assert!(Condition::compile(&format!("{} != ''", vec!["facts.v"; 40].join(" + "))).is_ok());
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let node = ubuntu_node();
        let inputs = [
            "\"",
            "'",
            "'''",
            "\"\"\"",
            "r'",
            "b'\\xff",
            "'\\U0011FFFF'",
            "'\\u00'",
            "\u{0}",
            "\u{202e}é💖\u{FFFF}",
            "facts.\u{0}",
            "`a`",
            "facts.`a`",
            "facts.?a",
            "facts[?'a']",
            "[?1]",
            "{?1: 2}",
            ".",
            "..",
            "has(",
            "has(1)",
            "has(facts)",
            "facts.exists(1, true)",
            "facts.map()",
            "facts.all(k)",
            "1.0.0",
            "0x",
            "1e",
            "1e999999 > 0",
            "-9223372036854775808 < 0",
            "9223372036854775808 > 0",
            "18446744073709551616u > 0",
            "-(-9223372036854775807 - 1) > 0",
            "size('x') == 1u",
            "dyn(1) == 1",
            "int('1e3') > 0",
            "uint('-1') > 0u",
            "double('nan') != double('nan')",
            "string(b'\\xff') == ''",
            "bytes('é') != b''",
            "[1,2][5] == 1",
            "{1: 2, 1: 3}[1] == 2",
            "{[1]: 2} == {}",
            "null == null",
            "1 in 1",
            "facts in facts",
            "true ? 1 : 'a'",
            "!1",
            "-'a' == 1",
            "type(1) == type",
            "a.b.c",
            ".facts.a == 'b'",
            "facts.a.b.c == 1",
            "// only a comment",
            "1 // comment\n == 1",
            "in",
            "as",
            "true.exists(x, x)",
            "facts.exists(@result, true)",
            "[].all(x, x)",
            "{}.exists(x, true)",
        ];
        for input in inputs {
            if let Ok(condition) = Condition::compile(input) {
                let _ = condition.evaluate(&node);
            }
        }
    }

    #[test]
    fn debug_shows_the_source() {
        let condition = Condition::compile("facts.a == 'b'").unwrap();
        assert_eq!(
            format!("{condition:?}"),
            r#"Condition { source: "facts.a == 'b'", .. }"#
        );
    }

    #[test]
    fn conditions_are_shareable() {
        fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
        assert_traits::<Condition>();
        let condition = Condition::compile("facts.os_dist == 'ubuntu'").unwrap();
        let clone = condition.clone();
        let holds = std::thread::spawn(move || clone.evaluate(&ubuntu_node()))
            .join()
            .unwrap();
        assert_eq!(holds, Ok(true));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of CEL, brackets and oddities, to build near-valid input.
        fn token() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "facts", ".", "os_dist", "x", "k", "(", ")", "[", "]", "{", "}", ",", ":", "?",
                "!", "-", "+", "*", "/", "%", "==", "!=", "<", ">=", "&&", "||", " in ", "'", "\"",
                "'''", "r'", "b'", "\\", "1", "0u", "1.5", "1e9", "true", "null", "has(", "int(",
                "size(", "exists(", ".all(", ".map(", ".filter(", "matches(", "'ubuntu'",
                "'(a+)+'", " ", "\n", "//", "é", "\u{0}", "💖", "`", "@result",
            ])
        }

        fn node() -> BTreeMap<String, String> {
            facts(&[("os_dist", "ubuntu"), ("x", "3"), ("k", "")])
        }

        fn exercise(input: &str) {
            if let Ok(condition) = Condition::compile(input) {
                let _ = condition.evaluate(&node());
                let _ = condition.evaluate(&BTreeMap::new());
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_strings_never_panic(input in any::<String>()) {
                exercise(&input);
            }

            #[test]
            fn cel_token_soup_never_panics(tokens in prop::collection::vec(token(), 0..80)) {
                exercise(&tokens.concat());
            }

            #[test]
            fn bracket_soup_never_panics(input in "[()\\[\\]{}a1.,:?'\"+!]{0,200}") {
                exercise(&input);
            }
        }
    }
}
