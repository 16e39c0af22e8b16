//! `keygate keys patterns`: rules that let leak scanners find this
//! deployment's keys (issue 20). Each matches `{prefix}_{environment}_` and
//! 38 base62 characters; the last 6 are a CRC32 checksum, which each format
//! explains, since a regex cannot check it.

use clap::ValueEnum;
use keygate_core::KeyFormat;

/// Which scanner the rules are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PatternFormat {
    /// A gitleaks rule (TOML, for `.gitleaks.toml` or `--config`).
    Gitleaks,
    /// A trufflehog custom detector (YAML, for `--config`).
    Trufflehog,
    /// What GitHub's custom secret-scanning pattern form asks for.
    Github,
    /// The bare regular expression.
    Regex,
}

const CHECKSUM_NOTE: &str = "The last 6 characters are the base62 CRC32 (IEEE) of everything before them: \
a match whose checksum does not verify is not a key of this deployment.";

/// The rules for `format`, as the scanner reads them.
pub fn render(format: PatternFormat, keys: &KeyFormat) -> String {
    let regex = keys.detection_regex();
    let prefix = keys.prefix();
    match format {
        PatternFormat::Regex => format!("{regex}\n"),
        PatternFormat::Gitleaks => format!(
            "# keygate API keys ({prefix}_<environment>_...).\n# {CHECKSUM_NOTE}\n\
             [[rules]]\n\
             id = \"keygate-{prefix}-api-key\"\n\
             description = \"keygate API key ({prefix})\"\n\
             regex = '''\\b({regex})\\b'''\n\
             secretGroup = 1\n\
             keywords = [\"{prefix}_\"]\n\
             tags = [\"api-key\", \"keygate\"]\n"
        ),
        PatternFormat::Trufflehog => format!(
            "# keygate API keys ({prefix}_<environment>_...).\n# {CHECKSUM_NOTE}\n\
             detectors:\n\
             \x20 - name: keygate-{prefix}\n\
             \x20   keywords:\n\
             \x20     - {prefix}_\n\
             \x20   regex:\n\
             \x20     key: '\\b({regex})\\b'\n"
        ),
        PatternFormat::Github => {
            // A fresh key of the right shape, stored nowhere: it opens nothing.
            let sample = keys
                .generate(keys.default_environment(), &mut rand::thread_rng())
                .map(|key| key.expose().to_owned())
                .unwrap_or_default();
            format!(
                "Pattern name: keygate API key ({prefix})\n\
                 Secret format: {regex}\n\
                 Before secret: \\A|[^0-9A-Za-z_]\n\
                 After secret: \\z|[^0-9A-Za-z_]\n\
                 Test string: {sample}\n\
                 Note: {CHECKSUM_NOTE}\n"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use regex::Regex;

    fn format() -> KeyFormat {
        KeyFormat::new("acme", &["prod".into(), "dev".into()]).unwrap()
    }

    /// Generated keys of every environment, admin keys among them.
    fn keys() -> Vec<String> {
        let format = format();
        ["prod", "dev", keygate_core::key::ADMIN_ENVIRONMENT]
            .iter()
            .flat_map(|env| (0..50).map(|_| format.generate(env, &mut rand::thread_rng()).unwrap()))
            .map(|key| key.expose().to_owned())
            .collect()
    }

    fn near_misses(key: &str) -> Vec<String> {
        vec![
            key.replacen("acme_", "acne_", 1),
            {
                let (_, rest) = key.split_once('_').unwrap();
                let (_, body) = rest.split_once('_').unwrap();
                format!("acme_stage_{body}")
            },
            key[..key.len() - 1].to_owned(),
            format!("{key}x"),
            format!("{}-{}", &key[..key.len() - 3], &key[key.len() - 2..]),
            format!("x{key}"),
        ]
    }

    fn assert_finds_keys_only(regex: &Regex) {
        for key in keys() {
            let text = format!("API_KEY=\"{key}\" # leaked");
            let found = regex.captures(&text).and_then(|c| c.get(1).or(c.get(0)));
            assert_eq!(found.map(|m| m.as_str()), Some(key.as_str()), "{key}");
            for miss in near_misses(&key) {
                assert!(!regex.is_match(&format!("API_KEY=\"{miss}\"")), "{miss} matched");
            }
        }
    }

    #[test]
    fn the_bare_regex_within_word_boundaries_finds_every_key_and_no_near_miss() {
        let regex = render(PatternFormat::Regex, &format());
        assert_finds_keys_only(&Regex::new(&format!(r"\b({})\b", regex.trim())).unwrap());
    }

    #[test]
    fn the_gitleaks_rule_is_toml_and_its_regex_finds_the_keys() {
        let text = render(PatternFormat::Gitleaks, &format());
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let rule = &parsed["rules"].as_array().unwrap()[0];
        assert_eq!(rule["keywords"].as_array().unwrap()[0].as_str(), Some("acme_"));
        assert_eq!(rule["secretGroup"].as_integer(), Some(1));
        assert_finds_keys_only(&Regex::new(rule["regex"].as_str().unwrap()).unwrap());
    }

    #[test]
    fn the_trufflehog_detector_names_a_regex_that_finds_the_keys() {
        let text = render(PatternFormat::Trufflehog, &format());
        let line = text.lines().find(|l| l.trim_start().starts_with("key: '")).unwrap();
        let regex = line.trim_start().trim_start_matches("key: '").trim_end_matches('\'');
        assert_finds_keys_only(&Regex::new(regex).unwrap());
        assert!(text.contains("      - acme_"), "{text}");
    }

    #[test]
    fn the_github_form_fields_combine_into_a_regex_that_finds_the_keys() {
        let text = render(PatternFormat::Github, &format());
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .unwrap()
                .to_owned()
        };
        let combined = format!(
            "(?:{})({})(?:{})",
            field("Before secret"),
            field("Secret format"),
            field("After secret")
        );
        let regex = Regex::new(&combined).unwrap();
        assert_finds_keys_only(&regex);
        let sample = field("Test string");
        assert!(format().parse(&sample).is_ok() && regex.is_match(&sample), "{sample}");
    }
}
