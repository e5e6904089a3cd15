//! The web client's words are all in its message catalogues (signaling/web/i18n/*.json), and
//! every catalogue is complete: the same keys as English, the plural forms its language
//! needs (CLDR), the same named placeholders. Then the client's files are read for text that
//! would reach the screen without a catalogue: text nodes and labelling attributes of
//! index.html, string literals the scripts put on the page, `content:` strings of the CSS;
//! and every key the scripts use is in the catalogues.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

fn web() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("signaling/web")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Map<String, Value> {
    match serde_json::from_str(&read(path)) {
        Ok(Value::Object(m)) => m,
        other => panic!("{}: not a JSON object ({other:?})", path.display()),
    }
}

/// The plural categories (CLDR) each language's catalogue must give for a counted text.
fn plural_forms(code: &str) -> &'static [&'static str] {
    match code {
        "en" | "mn" => &["one", "other"],
        "ko" | "zh" | "ja" | "vi" => &["other"],
        "ru" => &["one", "few", "many", "other"],
        "ar" => &["zero", "one", "two", "few", "many", "other"],
        other => panic!("no plural rules listed for {other}: add them here"),
    }
}

/// The `{name}` placeholders of a text.
fn placeholders(text: &str) -> BTreeSet<String> {
    text.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name.to_owned()))
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .collect()
}

fn catalogues() -> BTreeMap<String, Map<String, Value>> {
    let dir = web().join("i18n");
    let languages = json(&dir.join("languages.json"));
    let mut files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.remove("languages.json"));
    let listed: BTreeSet<String> = languages.keys().map(|c| format!("{c}.json")).collect();
    assert_eq!(files, listed, "catalogue files vs languages.json");
    for code in ["en", "ko", "zh", "ja", "ru", "vi", "mn", "ar"] {
        assert!(languages.contains_key(code), "{code} is not offered");
    }
    assert_eq!(languages["ar"]["dir"], "rtl");
    languages
        .keys()
        .map(|code| (code.clone(), json(&dir.join(format!("{code}.json")))))
        .collect()
}

#[test]
fn every_catalogue_has_every_key_its_plurals_and_its_placeholders() {
    let all = catalogues();
    let english = &all["en"];
    for (code, catalogue) in &all {
        let keys: BTreeSet<&String> = catalogue.keys().collect();
        let wanted: BTreeSet<&String> = english.keys().collect();
        assert_eq!(keys, wanted, "{code}: keys differ from English");
        for (key, text) in catalogue {
            let model = &english[key];
            match (model, text) {
                (Value::String(en), Value::String(t)) => {
                    assert!(!t.trim().is_empty(), "{code}: {key} is empty");
                    assert_eq!(placeholders(t), placeholders(en), "{code}: {key}: {t}");
                }
                (Value::Object(en), Value::Object(forms)) => {
                    let wanted = placeholders(en["other"].as_str().unwrap());
                    for form in plural_forms(code) {
                        let t = forms
                            .get(*form)
                            .and_then(Value::as_str)
                            .unwrap_or_else(|| panic!("{code}: {key} has no `{form}` form"));
                        // A form may spell its number out ("one minute"): `count` may go.
                        let mut got = placeholders(t);
                        got.insert("count".into());
                        let mut want = wanted.clone();
                        want.insert("count".into());
                        assert_eq!(got, want, "{code}: {key}.{form}: {t}");
                    }
                    for form in forms.keys() {
                        assert!(
                            plural_forms(code).contains(&form.as_str()),
                            "{code}: {key} has a `{form}` form its language does not use"
                        );
                    }
                }
                _ => panic!("{code}: {key} is not shaped as in English"),
            }
        }
    }
}

// ---- The client's files, read for text outside the catalogues ----------------------------

/// A string literal of a script: the line it starts on, its text (a template's `${...}`
/// parts left out), whether it is a template with such parts, and its text up to the
/// first of them.
#[derive(Debug)]
struct Literal {
    line: usize,
    text: String,
    prefix: String,
    templated: bool,
}

/// The string literals of a script, nested ones (in a template's `${...}`) included.
/// Comments and regular expressions are skipped.
fn literals(src: &str) -> Vec<Literal> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    // Open templates: (literal under construction, brace depth of its `${` code).
    let mut templates: Vec<(Literal, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut last_code = '(';
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied().unwrap_or('\0');
        if c == '\n' {
            line += 1;
        }
        match c {
            '/' if next == '/' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            '/' if next == '*' => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
                continue;
            }
            '/' if "(,=:[!&|?{};".contains(last_code) => {
                // A regular expression.
                i += 1;
                let mut class = false;
                while i < chars.len() && (chars[i] != '/' || class) {
                    match chars[i] {
                        '\\' => i += 1,
                        '[' => class = true,
                        ']' => class = false,
                        _ => {}
                    }
                    i += 1;
                }
                i += 1;
                last_code = ')';
                continue;
            }
            '\'' | '"' => {
                let start = line;
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                out.push(Literal {
                    line: start,
                    prefix: text.clone(),
                    text,
                    templated: false,
                });
                i += 1;
                last_code = ')';
                continue;
            }
            '`' => {
                templates.push((
                    Literal {
                        line,
                        text: String::new(),
                        prefix: String::new(),
                        templated: false,
                    },
                    depth,
                ));
                i += 1;
                i = template_part(&chars, i, &mut line, &mut templates, &mut out, &mut depth);
                last_code = ')';
                continue;
            }
            '{' => depth += 1,
            '}' => {
                if let Some((_, d)) = templates.last()
                    && *d + 1 == depth
                {
                    // The end of a `${...}`: the template goes on.
                    depth -= 1;
                    i += 1;
                    i = template_part(&chars, i, &mut line, &mut templates, &mut out, &mut depth);
                    last_code = ')';
                    continue;
                }
                depth = depth.saturating_sub(1);
            }
            _ => {}
        }
        if !c.is_whitespace() {
            last_code = c;
        }
        i += 1;
    }
    out
}

/// Read a template's text from `i` up to its end (the literal is done) or a `${` (its code
/// is read by the caller). Returns where to go on.
fn template_part(
    chars: &[char],
    mut i: usize,
    line: &mut usize,
    templates: &mut Vec<(Literal, usize)>,
    out: &mut Vec<Literal>,
    depth: &mut usize,
) -> usize {
    let (lit, _) = templates.last_mut().unwrap();
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                lit.text.push(chars.get(i + 1).copied().unwrap_or(' '));
                i += 2;
            }
            '`' => {
                let (lit, _) = templates.pop().unwrap();
                out.push(lit);
                return i + 1;
            }
            '$' if chars.get(i + 1) == Some(&'{') => {
                if !lit.templated {
                    lit.prefix = lit.text.clone();
                }
                lit.templated = true;
                // The `}` closing this comes at this depth plus one (see `literals`).
                templates.last_mut().unwrap().1 = *depth;
                *depth += 1;
                return i + 2;
            }
            c => {
                if c == '\n' {
                    *line += 1;
                }
                lit.text.push(c);
                i += 1;
            }
        }
    }
    i
}

/// Where a script puts text on the screen (or in what a screen reader says).
const SINKS: &[&str] = &[
    "textContent",
    "innerText",
    "innerHTML",
    ".title",
    "placeholder",
    "aria-label",
    "ariaLabel",
    "alert(",
    "confirm(",
    "prompt(",
    "fillText(",
    ".append(",
    ".prepend(",
    "replaceChildren(",
    "createTextNode(",
    "text:",
];

fn is_key(s: &str) -> bool {
    s.contains('.')
        && s.split('.').all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// Text a person would read: a word of two letters or more, markup's tags left out.
fn readable(text: &str) -> bool {
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' if text.trim_start().starts_with('<') => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    plain
        .split(|c: char| !c.is_alphabetic())
        .any(|w| w.chars().count() >= 2)
}

/// A token of code rather than words: an element, attribute, class or event name, or a
/// selector (`.badge`, `[data-i18n]`).
fn code_like(s: &str) -> bool {
    let name = s.trim_start_matches(['.', '#', '[']);
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_[]=.#".contains(c))
}

#[test]
fn no_visible_text_is_outside_the_catalogues() {
    let english = &catalogues()["en"];
    let namespaces: BTreeSet<&str> = english
        .keys()
        .map(|k| k.split('.').next().unwrap())
        .collect();
    let mut problems = Vec::new();
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(web())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "js"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 5, "{scripts:?}");
    let mut keys_used = 0;
    for path in &scripts {
        let name = path.file_name().unwrap().to_string_lossy();
        let src = read(path);
        let lines: Vec<&str> = src.lines().collect();
        for lit in literals(&src) {
            let code = lines.get(lit.line - 1).copied().unwrap_or_default();
            // A catalogue key (or a key made from a template): it must be there.
            let namespace = lit.prefix.split('.').next().unwrap_or_default();
            if namespaces.contains(namespace) && lit.prefix.contains('.') {
                if lit.templated && is_key(lit.prefix.trim_end_matches('.'))
                    || lit.prefix.ends_with('.')
                    || lit.prefix.ends_with('_')
                {
                    if !english.keys().any(|k| k.starts_with(&lit.prefix)) {
                        problems.push(format!(
                            "{name}:{}: no key starts with {}",
                            lit.line, lit.prefix
                        ));
                    }
                    keys_used += 1;
                    continue;
                }
                if !lit.templated && is_key(&lit.text) {
                    if !english.contains_key(&lit.text) {
                        problems.push(format!(
                            "{name}:{}: {} is not in the catalogues",
                            lit.line, lit.text
                        ));
                    }
                    keys_used += 1;
                    continue;
                }
            }
            if !SINKS.iter().any(|s| code.contains(s)) || !readable(&lit.text) {
                continue;
            }
            if code_like(&lit.text) || is_key(&lit.text) {
                continue;
            }
            problems.push(format!(
                "{name}:{}: text outside the catalogues: {:?}",
                lit.line, lit.text
            ));
        }
    }
    assert!(
        keys_used > 100,
        "only {keys_used} keys found in the scripts"
    );

    // index.html: no text of its own; labelling attributes only through data-i18n-attr.
    let html = read(&web().join("index.html"));
    let mut rest = html.as_str();
    let mut text = String::new();
    while let Some(open) = rest.find('<') {
        text.push_str(&rest[..open]);
        let tag_end = rest[open..].find('>').map_or(rest.len(), |e| open + e + 1);
        let tag = &rest[open..tag_end];
        for attr in [
            "aria-label=",
            "aria-roledescription=",
            "aria-description=",
            "placeholder=",
            "title=",
            "alt=",
            "label=",
        ] {
            if let Some(at) = tag.find(&format!(" {attr}")) {
                let value = tag[at + attr.len() + 1..]
                    .split('"')
                    .nth(1)
                    .unwrap_or_default();
                if readable(value) {
                    problems.push(format!(
                        "index.html: {attr}{value:?} outside the catalogues"
                    ));
                }
            }
        }
        rest = &rest[tag_end..];
        for skip in ["<!--", "<script", "<style"] {
            if tag.starts_with(skip) {
                let end = if skip == "<!--" { "-->" } else { "</" };
                if !tag.ends_with("-->") {
                    rest = rest.find(end).map_or("", |e| &rest[e..]);
                }
            }
        }
    }
    for word in text.split_whitespace() {
        if readable(word) {
            problems.push(format!("index.html: text outside the catalogues: {word:?}"));
        }
    }
    for key in html
        .split("data-i18n=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
    {
        if !english.contains_key(key) {
            problems.push(format!("index.html: {key} is not in the catalogues"));
        }
    }
    for attrs in html
        .split("data-i18n-attr=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
    {
        for pair in attrs.split(';') {
            let key = pair.split(':').nth(1).unwrap_or_default().trim();
            if !english.contains_key(key) {
                problems.push(format!("index.html: {key} is not in the catalogues"));
            }
        }
    }

    // The style sheet: generated content is never words.
    let css = read(&web().join("style.css"));
    for (n, line) in css.lines().enumerate() {
        if let Some(at) = line.find("content:") {
            let value = line[at..].split(';').next().unwrap_or_default();
            let quoted: Vec<&str> = value.split('"').skip(1).step_by(2).collect();
            if quoted.iter().any(|q| readable(q)) {
                problems.push(format!(
                    "style.css:{}: text outside the catalogues: {value}",
                    n + 1
                ));
            }
        }
        for physical in [
            "margin-left",
            "margin-right",
            "padding-left",
            "padding-right",
            "border-left",
            "border-right",
            " left:",
            " right:",
            "text-align: left",
            "text-align: right",
            "float: left",
            "float: right",
        ] {
            if line.contains(physical) {
                problems.push(format!("style.css:{}: {physical} (use logical properties: the page also runs right to left)", n + 1));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    let src = "el.textContent = 'Camera off';\nb.append(`Hello ${name}`, t('chat.send'));\n\
               const re = /a'b/g; // 'not a literal'\nx.title = t(`ended.${reason}`);";
    let found: Vec<(usize, String, bool)> = literals(src)
        .into_iter()
        .map(|l| (l.line, l.text, l.templated))
        .collect();
    assert!(
        found.contains(&(1, "Camera off".into(), false)),
        "{found:?}"
    );
    assert!(found.contains(&(2, "Hello ".into(), true)), "{found:?}");
    assert!(found.contains(&(2, "chat.send".into(), false)), "{found:?}");
    assert!(found.contains(&(4, "ended.".into(), true)), "{found:?}");
    assert!(
        !found
            .iter()
            .any(|f| f.1.contains("not a literal") || f.1 == "b/g; "),
        "{found:?}"
    );
    assert!(readable("Camera off") && !readable(" (") && !readable("<svg viewBox=\"0 0\"></svg>"));
    assert!(is_key("chat.send") && !is_key("Camera off") && code_like("aria-label"));
    assert_eq!(
        placeholders("{count} of {total}, {}"),
        ["count".to_owned(), "total".to_owned()].into()
    );
}
