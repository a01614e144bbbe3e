//! A seeded mutation fuzz of `check`: thousands of mangled recipes (the shipped ones, the
//! stdlib, test projects, the broken corpus) go through the library's check entry point
//! in-process, and none may panic or abort. Deterministic: a failure names the case and
//! seed, and leaves the input in `$CARGO_TARGET_TMPDIR/recipe-fuzz-last.kdl` (written
//! before each case, so even an abort leaves it behind).

use effectc::project::Project;
use effectc::recipe::Loader;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

const CASES: usize = 3000;
/// One case in this many mutates a stdlib or target file instead of the recipe.
const REGISTRY_EVERY: usize = 8;

/// xorshift64*: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces that matter to KDL and to effectc, spliced in at random.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "\"",
    "#\"",
    "\"#",
    "\"\"\"",
    "/*",
    "*/",
    "//",
    "/-",
    ";",
    "=",
    "(",
    ")",
    "\\",
    "\n",
    "\r\n",
    " ",
    "#true",
    "#null",
    "#nan",
    "#inf",
    "#-inf",
    "0x",
    "1e",
    "-",
    ".",
    "effect",
    "extends",
    "sources",
    "teacher",
    "target",
    "images",
    "synthetic",
    "crop",
    "holdout",
    "prompt",
    "{attributes}",
    "{atributes}",
    "{input}",
    "{}",
    "{a-b}",
    "path",
    "\"../x\"",
    "\"/etc\"",
    "\"**/*.png\"",
    "\"[\"",
    "\"{a,b}\"",
    "diffusion",
    "directory",
    "command",
    "procedural",
    "base \"sd15\"",
    "controlnet \"softedge\"",
    "lora \"lego-minifig\"",
    "instruct-pix2pix \"x\"",
    "attributes \"hair-color\"",
    "student width=8",
    "train { batch 2; }",
    "quantize=\"int8\"",
    "count=",
    "size=",
];
const NUMBERS: &[&str] = &[
    "99999999999999999999999999999999999999999",
    "-99999999999999999999999999999999999999999",
    "340282366920938463463374607431768211456",
    "18446744073709551616",
    "-9223372036854775809",
    "1e999999",
    "-1e-999999",
    "0x7fffffffffffffffffffffffffffffff",
    "0b11111111111111111111111111111111111111111111111111111111111111111",
    "0o7777777777777777777777777777777",
    "1.7976931348623157e308",
    "4.9e-324",
    "0.000000000000000000000000000000001",
    "-0",
    "1_000_000_000_000",
];
const UNICODE: &[&str] = &[
    "\u{202E}",
    "\u{FEFF}",
    "\u{200B}",
    "\u{0}",
    "\u{7F}",
    "\u{85}",
    "\u{2028}",
    "\u{2029}",
    "é",
    "e\u{301}",
    "👩‍🎤",
    "\u{10FFFF}",
    "\u{FFFD}",
    "ß",
    "İ",
    "\u{1F3FF}",
    "\t",
    "\u{B}",
    "\u{C}",
    "\u{A0}",
    "\u{3000}",
    "ﬀ",
];

/// A recipe that reaches every registry and a target profile, for mutated stdlib files.
const REGISTRY_USER: &str = r#"effect "reg" {
    extends "portrait"
    sources { synthetic count=2; }
    attributes "hair-color"
    teacher "diffusion" {
        base "sd15"
        controlnet "softedge"
        prompt "a toy, {attributes}"
    }
    target "onnx"
}"#;

fn corpus(root: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in [
        "effects",
        "stdlib",
        "targets",
        "tests/recipes/broken",
        "tests/projects",
    ] {
        for e in walkdir::WalkDir::new(root.join(dir))
            .sort_by_file_name()
            .into_iter()
            .filter_map(|e| e.ok())
        {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "kdl") {
                let text = std::fs::read_to_string(p).unwrap();
                // Broken-corpus files carry extra files after `// --- file:`.
                for part in text.split("// --- file: ") {
                    files.push((p.display().to_string(), part.to_string()));
                }
            }
        }
    }
    assert!(files.len() >= 40, "corpus too small: {}", files.len());
    files
}

fn insert(b: &mut Vec<u8>, at: usize, piece: &[u8]) {
    b.splice(at..at, piece.iter().copied());
}

fn mutate(rng: &mut Rng, text: &str, corpus: &[(String, String)]) -> String {
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len() + 1);
        match rng.below(11) {
            0 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                if !b.is_empty() {
                    let i = rng.below(b.len());
                    b[i] = rng.next() as u8;
                }
            }
            2 => {
                let len = rng.below(64).min(b.len() - at);
                b.drain(at..at + len);
            }
            3 => {
                let len = rng.below(200).min(b.len() - at);
                let piece = b[at..at + len].to_vec();
                let many = rng.below(10) == 0;
                let times = 1 + rng.below(if many { 500 } else { 3 });
                for _ in 0..times {
                    insert(&mut b, at, &piece);
                }
            }
            4 => {
                let other = rng.pick(corpus).1.as_bytes();
                let from = rng.below(other.len() + 1);
                let len = rng.below(300).min(other.len() - from);
                insert(&mut b, at, &other[from..from + len]);
            }
            5 => {
                // Deep nesting, balanced or not, in several spellings.
                let depth = *rng.pick(&[10, 63, 64, 65, 200, 3000, 20000]);
                let open = *rng.pick(&["a {", "{", "a {\n", "/*", "(", "\"", "#\""]);
                let close = *rng.pick(&["}", "}\n", "*/", ")", "", "\"#"]);
                let s = format!("{}{}", open.repeat(depth), close.repeat(depth));
                insert(&mut b, at, s.as_bytes());
            }
            6 => insert(&mut b, at, rng.pick(NUMBERS).as_bytes()),
            7 => insert(&mut b, at, rng.pick(UNICODE).as_bytes()),
            8 => insert(&mut b, at, rng.pick(TOKENS).as_bytes()),
            9 => {
                // Long runs the parser might walk one step at a time.
                let unit = *rng.pick(&["*", "/", "}", "\\", " ", "\n", ";", "#", "a", "/-"]);
                let s = unit.repeat(*rng.pick(&[100, 1000, 5000, 50000]));
                insert(&mut b, at, s.as_bytes());
            }
            _ => {
                if !b.is_empty() {
                    b.truncate(at);
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// The effect name a recipe text declares (its file must be named so to check deeply).
fn effect_name(text: &str) -> String {
    text.split("effect \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .filter(|n| !n.is_empty() && !n.contains(['/', '\\', '\0']) && n.len() < 64)
        .unwrap_or("fuzz")
        .to_string()
}

/// One `effectc check` in-process: load, check, render every diagnostic.
fn check(project: &Project, loader: Option<&Loader>, name: &str, text: String) -> usize {
    let fresh;
    let loader = match loader {
        Some(l) => l,
        None => {
            fresh = Loader::new(project);
            &fresh
        }
    };
    match loader.load_text(name, text) {
        Ok(_) => 0,
        Err(d) => {
            let _ = d.render(false);
            d.0.len()
        }
    }
}

#[test]
fn check_survives_thousands_of_mangled_recipes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = corpus(root);
    let last = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("recipe-fuzz-last.kdl");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("effects")).unwrap();
    std::fs::create_dir_all(dir.path().join("photos")).unwrap();
    let project = Project {
        root: dir.path().to_path_buf(),
    };
    let started = std::time::Instant::now();
    // The CLI checks on its main thread: give the loop the same 8 MiB stack.
    let outcome = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let loader = Loader::new(&project);
            let mut rng = Rng(0x5EED_0FEF_FEC7);
            let (mut rejected, mut accepted) = (0, 0);
            for case in 0..CASES {
                let (origin, seed_text) = rng.pick(&corpus).clone();
                let text = mutate(&mut rng, &seed_text, &corpus);
                std::fs::write(&last, &text).unwrap();
                let registry_case = case % REGISTRY_EVERY == REGISTRY_EVERY - 1;
                let result = catch_unwind(AssertUnwindSafe(|| {
                    if registry_case {
                        // The same text as a project's stdlib or target file.
                        let file = *[
                            "stdlib/models.kdl",
                            "stdlib/controlnets.kdl",
                            "stdlib/attributes.kdl",
                            "stdlib/portrait.kdl",
                            "targets/onnx.kdl",
                        ]
                        .get(case / REGISTRY_EVERY % 5)
                        .unwrap();
                        let path = project.root.join(file);
                        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                        std::fs::write(&path, &text).unwrap();
                        let n = check(&project, None, "reg", REGISTRY_USER.to_string());
                        std::fs::remove_file(&path).unwrap();
                        n
                    } else {
                        check(&project, Some(&loader), &effect_name(&text), text.clone())
                    }
                }));
                match result {
                    Ok(0) => accepted += 1,
                    Ok(_) => rejected += 1,
                    Err(_) => {
                        return Err(format!(
                            "case {case} (mutated from {origin}) panicked; its input is in {}",
                            last.display()
                        ))
                    }
                }
            }
            Ok((accepted, rejected))
        })
        .unwrap()
        .join()
        .unwrap();
    let (accepted, rejected) = outcome.unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{CASES} cases in {:.1} s: {accepted} accepted, {rejected} rejected with diagnostics",
        started.elapsed().as_secs_f64()
    );
    assert!(
        rejected > CASES / 2,
        "mutations must mostly break recipes ({rejected} rejected)"
    );
    assert!(accepted > 0, "some mutations leave a valid recipe");
}
