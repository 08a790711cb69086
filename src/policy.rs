//! TEMPORARY stand-in until the CEL module lands.
use std::collections::BTreeMap;
/// Longest expression.
pub const MAX_EXPRESSION_LEN: usize = 4096;
/// Compiled condition.
#[derive(Debug, Clone)]
pub struct Condition { src: String }
/// Compile error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PolicyError { /// m
pub message: String, /// l
pub line: Option<u32>, /// c
pub column: Option<u32> }
/// Eval error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError { /// m
pub message: String }
impl Condition {
    /// c
    pub fn compile(when: &str) -> Result<Condition, PolicyError> { Ok(Condition { src: when.into() }) }
    /// s
    pub fn source(&self) -> &str { &self.src }
    /// e
    pub fn evaluate(&self, _f: &BTreeMap<String, String>) -> Result<bool, EvalError> { Ok(false) }
}
