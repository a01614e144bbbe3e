//! Stage ids: unique in a plan and stable across builds (`crop/synthetic-0003`,
//! `train-teacher`). Made only by these constructors, so the planner, the CLI and watch
//! cannot disagree about a spelling.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StageId(String);

impl StageId {
    pub fn synthetic(item: &str) -> StageId {
        StageId(format!("synthetic/{item}"))
    }
    pub fn crop(item: &str) -> StageId {
        StageId(format!("crop/{item}"))
    }
    pub fn attributes(item: &str) -> StageId {
        StageId(format!("attributes/{item}"))
    }
    pub fn control(preprocessor: &str, item: &str) -> StageId {
        StageId(format!("control:{preprocessor}/{item}"))
    }
    pub fn pairs(item: &str) -> StageId {
        StageId(format!("pairs/{item}"))
    }
    pub fn identity(item: &str) -> StageId {
        StageId(format!("identity/{item}"))
    }
    pub fn identity_filter() -> StageId {
        StageId("identity-filter".into())
    }
    pub fn pairs_sheet() -> StageId {
        StageId("pairs-sheet".into())
    }
    pub fn train_teacher() -> StageId {
        StageId("train-teacher".into())
    }
    pub fn distill_student() -> StageId {
        StageId("distill-student".into())
    }
    pub fn export() -> StageId {
        StageId("export".into())
    }
    pub fn target(name: &str) -> StageId {
        StageId(format!("target:{name}"))
    }
    pub fn verify(name: &str) -> StageId {
        StageId(format!("verify:{name}"))
    }
    pub fn bundle() -> StageId {
        StageId("bundle".into())
    }
    /// An id read back from a record or given on the command line (`effectc explain`).
    pub fn parse(text: &str) -> StageId {
        StageId(text.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name an output of this stage gets in `out/EFFECT/`
    /// (`pairs-sheet-pairs.png`, `target-ios-coreml-...`).
    pub fn out_file_name(&self, output: &str) -> String {
        format!("{}-{output}", self.0.replace([':', '/'], "-"))
    }
}

impl std::ops::Deref for StageId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for StageId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for StageId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StageId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
