//! The docs against the code, offline and unprivileged: every relative link
//! in README.md, CHANGELOG.md and docs/ reaches a file (and a heading of it);
//! every `weft agent` flag, lease rule, fast-path counter and metric family is
//! documented where a reader looks for it (docs/operating.md, security.md,
//! datapath.md), and every one those places name exists. The names come from
//! the code's own tables (the agent's clap definition, `Rule::ALL`,
//! `COUNTERS`, the metrics registry), so a rename fails here, not in a
//! reader's hands.
//!
//! Checked by hand that each test can fail: a flag, a rule, a counter and a
//! metric taken out of its doc (and a made-up one put in), and a link to a
//! missing heading, each fail with the file, the line and the name.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    ops::Range,
    path::{Component, Path, PathBuf},
};

use clap::CommandFactory as _;
use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};
use weft_agent::{cli::Cli, lease::validate::Rule, metrics};
use weft_common::{COUNTERS, HOOKS};

/// A link target that does not exist yet, by path from the repository root,
/// tolerated only while it is missing. docs/kubernetes.md is being written on
/// another branch; remove this entry when it lands.
const PENDING_DOCS: &[&str] = &["docs/kubernetes.md"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One Markdown file, parsed once.
struct Doc {
    /// From the repository root, as messages name it.
    path: PathBuf,
    text: String,
    /// Byte offset of each line's start.
    line_starts: Vec<usize>,
    headings: Vec<Heading>,
    links: Vec<Spanned>,
    code_spans: Vec<Spanned>,
}

struct Heading {
    level: HeadingLevel,
    text: String,
    start: usize,
}

/// A piece of the text (a link target, an inline code span) and where it is.
struct Spanned {
    text: String,
    start: usize,
}

impl Doc {
    fn load(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let text = fs::read_to_string(repo_root().join(&path))
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        let mut headings = Vec::new();
        let mut links = Vec::new();
        let mut code_spans = Vec::new();
        let mut open_heading: Option<Heading> = None;
        for (event, range) in Parser::new(&text).into_offset_iter() {
            match event {
                Event::Start(Tag::Heading { level, .. }) => {
                    open_heading = Some(Heading {
                        level,
                        text: String::new(),
                        start: range.start,
                    });
                }
                Event::End(TagEnd::Heading(_)) => headings.extend(open_heading.take()),
                Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                    links.push(Spanned {
                        text: dest_url.into_string(),
                        start: range.start,
                    });
                }
                Event::Text(piece) => {
                    if let Some(heading) = &mut open_heading {
                        heading.text.push_str(&piece);
                    }
                }
                Event::Code(code) => {
                    if let Some(heading) = &mut open_heading {
                        heading.text.push_str(&code);
                    }
                    code_spans.push(Spanned {
                        text: code.into_string(),
                        start: range.start,
                    });
                }
                _ => {}
            }
        }
        Self {
            path,
            text,
            line_starts,
            headings,
            links,
            code_spans,
        }
    }

    /// "docs/x.md:12" for byte offset `at`.
    fn at(&self, at: usize) -> String {
        let line = self.line_starts.partition_point(|&start| start <= at);
        format!("{}:{line}", self.path.display())
    }

    /// The anchors GitHub gives the headings.
    fn anchors(&self) -> BTreeSet<String> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        self.headings
            .iter()
            .map(|heading| {
                let slug = github_slug(&heading.text);
                let count = seen.entry(slug.clone()).or_default();
                *count += 1;
                match *count {
                    1 => slug,
                    n => format!("{slug}-{}", n - 1),
                }
            })
            .collect()
    }

    /// The byte range of the section under the heading `title` (up to the
    /// next heading of its level or above).
    fn section(&self, title: &str) -> Range<usize> {
        let index = self
            .headings
            .iter()
            .position(|heading| heading.text == title)
            .unwrap_or_else(|| panic!("{}: no heading {title:?}", self.path.display()));
        let heading = &self.headings[index];
        let end = self.headings[index + 1..]
            .iter()
            .find(|next| next.level <= heading.level)
            .map_or(self.text.len(), |next| next.start);
        heading.start..end
    }

    /// The inline code spans in `range`.
    fn code_in(&self, range: Range<usize>) -> impl Iterator<Item = &Spanned> {
        self.code_spans
            .iter()
            .filter(move |span| range.contains(&span.start))
    }

    /// The lines in `range`, each with its start offset.
    fn lines_in(&self, range: Range<usize>) -> impl Iterator<Item = (usize, &str)> {
        let text = &self.text;
        self.line_starts
            .iter()
            .copied()
            .filter(move |start| range.contains(start))
            .map(move |start| {
                let end = text[start..].find('\n').map_or(text.len(), |n| start + n);
                (start, &text[start..end])
            })
    }
}

/// GitHub's heading anchor: lower case, punctuation other than `-` and `_`
/// dropped, spaces to `-`.
fn github_slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// README.md, CHANGELOG.md and every Markdown file under docs/.
fn all_docs() -> Vec<Doc> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let root = repo_root();
        let entries = fs::read_dir(root.join(dir))
            .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()));
        for entry in entries {
            let path = dir.join(entry.expect("a directory entry").file_name());
            if root.join(&path).is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                found.push(path);
            }
        }
    }
    let mut paths = vec![PathBuf::from("README.md"), PathBuf::from("CHANGELOG.md")];
    walk(Path::new("docs"), &mut paths);
    paths.sort();
    paths.into_iter().map(Doc::load).collect()
}

/// `path` with `.` and `..` taken out, or `None` if it climbs out of the
/// repository.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Fails with every problem found, one per line.
fn assert_none(problems: Vec<String>, what: &str) {
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

#[test]
fn every_relative_link_reaches_a_file_and_a_heading() {
    let docs = all_docs();
    let anchors: HashMap<&Path, BTreeSet<String>> = docs
        .iter()
        .map(|doc| (doc.path.as_path(), doc.anchors()))
        .collect();
    let root = repo_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        for link in &doc.links {
            let dest = link.text.as_str();
            if dest.contains("://") || dest.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, anchor) = dest.split_once('#').unwrap_or((dest, ""));
            let target = if file.is_empty() {
                Some(doc.path.clone())
            } else {
                normalize(&doc.path.parent().unwrap_or(Path::new("")).join(file))
            };
            let Some(target) = target else {
                problems.push(format!(
                    "{}: link {dest:?} leads out of the repository",
                    doc.at(link.start)
                ));
                continue;
            };
            if !root.join(&target).exists() {
                let pending = PENDING_DOCS.iter().any(|p| Path::new(p) == target);
                if !pending {
                    problems.push(format!(
                        "{}: link {dest:?}: {} does not exist",
                        doc.at(link.start),
                        target.display()
                    ));
                }
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            match anchors.get(target.as_path()) {
                Some(headings) if !headings.contains(anchor) => problems.push(format!(
                    "{}: link {dest:?}: {} has no heading with anchor #{anchor}",
                    doc.at(link.start),
                    target.display()
                )),
                Some(_) => {}
                None if target.extension().is_some_and(|ext| ext == "md") => {
                    problems.push(format!(
                        "{}: link {dest:?}: {} is not among the checked docs",
                        doc.at(link.start),
                        target.display()
                    ))
                }
                // An anchor into source (`#L10`) or data is not a heading.
                None => {}
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} relative links found: is the parser reading the docs?"
    );
    assert_none(problems, "broken links");
}

/// The `--flag` names on `line`.
fn flags_on(line: &str) -> impl Iterator<Item = &str> {
    line.match_indices("--").filter_map(move |(at, _)| {
        let before = line[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '-') {
            return None;
        }
        let rest = &line[at + 2..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        let name = &rest[..len];
        name.starts_with(|c: char| c.is_ascii_lowercase())
            .then_some(name)
    })
}

#[test]
fn every_agent_flag_is_documented_and_every_documented_one_exists() {
    let cli = Cli::command();
    let agent = cli
        .find_subcommand("agent")
        .expect("weft has an agent subcommand");
    let flags: BTreeSet<String> = agent
        .get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect();
    assert!(
        flags.len() > 20,
        "only {} agent flags: {flags:?}",
        flags.len()
    );

    let doc = Doc::load("docs/operating.md");
    let running = doc.section("Running the agent");
    let mut problems = Vec::new();
    let table: BTreeSet<&str> = doc
        .lines_in(running.clone())
        .filter(|(_, line)| line.starts_with('|'))
        .flat_map(|(_, line)| flags_on(line))
        .collect();
    for flag in &flags {
        if !table.contains(flag.as_str()) {
            problems.push(format!(
                "{}: `weft agent --{flag}` is not in the flag table of \"Running the agent\"",
                doc.at(running.start)
            ));
        }
    }
    // What the section names, and any `weft agent` command line elsewhere.
    let agent_lines = doc
        .lines_in(0..doc.text.len())
        .filter(|(start, line)| running.contains(start) || line.contains("weft agent"));
    for (start, line) in agent_lines {
        for flag in flags_on(line) {
            if !flags.contains(flag) {
                problems.push(format!(
                    "{}: `--{flag}` is not a `weft agent` flag",
                    doc.at(start)
                ));
            }
        }
    }
    assert_none(
        problems,
        "docs/operating.md and `weft agent`'s flags disagree",
    );
}

#[test]
fn every_lease_rule_is_documented_and_every_documented_one_exists() {
    let rules: BTreeSet<&str> = Rule::ALL.iter().map(|rule| rule.name()).collect();
    let doc = Doc::load("docs/security.md");
    let section = doc.section("Hostile leases");
    let mut problems = Vec::new();
    // The rule table: its first column names the rules.
    let mut named = BTreeSet::new();
    for (start, line) in doc.lines_in(section.clone()) {
        let Some(first_cell) = line.strip_prefix('|').and_then(|row| row.split('|').next()) else {
            continue;
        };
        let line_range = start..start + line.len();
        let in_first_cell = start..start + 1 + first_cell.len();
        for span in doc.code_in(line_range.clone()) {
            if !in_first_cell.contains(&span.start) {
                continue;
            }
            if !rules.contains(span.text.as_str()) {
                problems.push(format!(
                    "{}: `{}` is not a lease rule (Rule::ALL)",
                    doc.at(span.start),
                    span.text
                ));
            }
            named.insert(span.text.as_str());
        }
    }
    for rule in &rules {
        if !named.contains(rule) {
            problems.push(format!(
                "{}: lease rule `{rule}` is not in the rule table of \"Hostile leases\"",
                doc.at(section.start)
            ));
        }
    }
    assert_none(problems, "docs/security.md and the lease rules disagree");
}

#[test]
fn every_fast_path_counter_is_documented_and_every_documented_one_exists() {
    let counters: BTreeSet<&str> = COUNTERS.iter().map(|(_, name)| *name).collect();
    let hooks: BTreeSet<&str> = HOOKS.iter().map(|hook| hook.name()).collect();
    let reasons: BTreeSet<&str> = COUNTERS.iter().map(|(id, _)| id.reason.name()).collect();
    let doc = Doc::load("docs/datapath.md");
    let counters_section = doc.section("Counters");
    let mut problems = Vec::new();
    let documented: BTreeSet<&str> = doc
        .code_in(counters_section.clone())
        .map(|span| span.text.as_str())
        .collect();
    for counter in &counters {
        if !documented.contains(counter) {
            problems.push(format!(
                "{}: counter `{counter}` is not named in \"Counters\"",
                doc.at(counters_section.start)
            ));
        }
    }
    // A name that looks like a counter, a hook or a reason must be one.
    let looks_like_a_counter = |name: &str| {
        let prefixed = ["xdp_", "tc_", "verdict_", "pass_", "drop_"]
            .iter()
            .any(|prefix| name.starts_with(prefix));
        let one_word = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        // `pass_` alone is the prefix the text talks about, no name.
        (prefixed && one_word && !name.ends_with('_'))
            || name == "uplink_rx"
            || name == "pod_egress"
    };
    let why_kernel = doc.section("What takes the kernel path, and why");
    for span in doc
        .code_in(why_kernel.clone())
        .chain(doc.code_in(counters_section.clone()))
    {
        let name = span.text.as_str();
        if looks_like_a_counter(name)
            && !counters.contains(name)
            && !hooks.contains(name)
            && !reasons.contains(name)
        {
            problems.push(format!(
                "{}: `{name}` is no counter, hook or reason (weft_common::COUNTERS)",
                doc.at(span.start)
            ));
        }
    }
    assert_none(
        problems,
        "docs/datapath.md and the fast-path counters disagree",
    );
}

/// The `weft_*` names in `code` (`rate(weft_x_total[5m])` names `weft_x_total`).
fn metric_names(code: &str) -> impl Iterator<Item = &str> {
    code.match_indices("weft_").filter_map(move |(at, _)| {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[at..];
        let len = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        Some(&rest[..len])
    })
}

/// Whether `sample` is a name `/metrics` shows for `family`: the family's
/// own, or with OpenMetrics' suffix (`_total` for a counter, `_info` for an
/// info).
fn names_family(sample: &str, family: &str) -> bool {
    sample == family
        || sample
            .strip_prefix(family)
            .is_some_and(|suffix| ["_total", "_info"].contains(&suffix))
}

#[test]
fn every_metric_family_is_documented_and_every_documented_one_exists() {
    let families = metrics::family_names();
    assert!(
        families.len() > 20,
        "only {} families: {families:?}",
        families.len()
    );
    let exists = |sample: &str| families.iter().any(|family| names_family(sample, family));
    let doc = Doc::load("docs/operating.md");
    let table = doc.section("Metrics");
    let mut problems = Vec::new();
    let documented: BTreeSet<&str> = doc
        .lines_in(table.clone())
        .filter(|(_, line)| line.starts_with('|'))
        .flat_map(|(start, line)| doc.code_in(start..start + line.len()))
        .flat_map(|span| metric_names(&span.text))
        .collect();
    for family in &families {
        let in_table = documented.iter().any(|name| names_family(name, family));
        if !in_table {
            problems.push(format!(
                "{}: metric family `{family}` is not in the table of \"Metrics\"",
                doc.at(table.start)
            ));
        }
    }
    let alerts = doc.section("What to alert on");
    for span in doc
        .code_in(table.clone())
        .chain(doc.code_in(alerts.clone()))
    {
        for name in metric_names(&span.text) {
            if !exists(name) {
                problems.push(format!(
                    "{}: `{name}` is no metric the agent serves (metrics::family_names)",
                    doc.at(span.start)
                ));
            }
        }
    }
    assert_none(
        problems,
        "docs/operating.md and the agent's metrics disagree",
    );
}

#[test]
fn github_slugs_follow_githubs_rules() {
    assert_eq!(
        github_slug("The accept bit is weft's alone"),
        "the-accept-bit-is-wefts-alone"
    );
    assert_eq!(
        github_slug("What netfilter keeps deciding, and what it does not see"),
        "what-netfilter-keeps-deciding-and-what-it-does-not-see"
    );
    assert_eq!(github_slug("tests/src/"), "testssrc");
    assert_eq!(github_slug("snake_case and 1.0"), "snake_case-and-10");
}
