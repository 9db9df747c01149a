// egress-milter – stop hijacked mail accounts from flooding the internet
// Copyright © 2026 The egress-milter developers
// SPDX-License-Identifier: GPL-3.0-or-later

//! Content verdicts: what a scanner's report of one message means for the
//! rules that count `spam`, `phishing` and `virus`. Plain values: asking
//! the scanner is the adapter's business (`crate::scan`).

use crate::config::ScannerConfig;
use std::fmt;

/// What the scanner said of one message, as rspamd's protocol reports it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScanReport {
    /// rspamd's action: "no action", "add header", "reject", ...
    pub action: String,
    pub score: f64,
    /// The symbols that matched, by name.
    pub symbols: Vec<String>,
}

/// Which content counts one scanned message feeds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Content {
    pub spam: bool,
    pub phishing: bool,
    pub virus: bool,
}

impl Content {
    /// The counts `report` feeds under `config`: spam by one of
    /// `spam_actions` or a score of at least `spam_score`; phishing and
    /// virus by one of their symbols. One message may feed all three.
    pub fn classify(report: &ScanReport, config: &ScannerConfig) -> Content {
        let has = |list: &[String]| report.symbols.iter().any(|s| list.contains(s));
        Content {
            spam: config.spam_actions.contains(&report.action)
                || config.spam_score.is_some_and(|min| report.score >= min),
            phishing: has(&config.phishing_symbols),
            virus: has(&config.virus_symbols),
        }
    }

    /// Whether the message feeds no count.
    pub fn is_clean(self) -> bool {
        self == Content::default()
    }
}

/// The verdict's label in logs and metrics: the worst it feeds.
impl fmt::Display for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.virus {
            "virus"
        } else if self.phishing {
            "phishing"
        } else if self.spam {
            "spam"
        } else {
            "ham"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(action: &str, score: f64, symbols: &[&str]) -> ScanReport {
        ScanReport {
            action: action.into(),
            score,
            symbols: symbols.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn actions_scores_and_symbols_make_the_verdict() {
        let config = ScannerConfig::default();
        let ham = Content::classify(&report("no action", 1.5, &["MIME_GOOD"]), &config);
        assert!(ham.is_clean());
        assert_eq!(ham.to_string(), "ham");
        let spam = Content::classify(&report("reject", 15.0, &["GTUBE"]), &config);
        assert_eq!(
            spam,
            Content {
                spam: true,
                ..Content::default()
            }
        );
        assert!(Content::classify(&report("add header", 6.0, &[]), &config).spam);
        assert!(Content::classify(&report("rewrite subject", 6.0, &[]), &config).spam);
        // Greylisting and a soft reject are rspamd's doubts, not spam.
        assert!(Content::classify(&report("greylist", 4.0, &[]), &config).is_clean());
        assert!(Content::classify(&report("soft reject", 0.0, &[]), &config).is_clean());
        let phish = Content::classify(&report("no action", 2.0, &["PHISHED_OPENPHISH"]), &config);
        assert!(phish.phishing && !phish.spam && !phish.virus);
        assert_eq!(phish.to_string(), "phishing");
        let all = Content::classify(&report("reject", 30.0, &["CLAM_VIRUS", "PHISHING"]), &config);
        assert!(all.spam && all.phishing && all.virus);
        assert_eq!(all.to_string(), "virus");
    }

    #[test]
    fn a_score_threshold_adds_to_the_actions() {
        let config = ScannerConfig {
            spam_score: Some(5.0),
            spam_actions: vec!["reject".into()],
            ..ScannerConfig::default()
        };
        assert!(Content::classify(&report("no action", 5.0, &[]), &config).spam);
        assert!(!Content::classify(&report("add header", 4.9, &[]), &config).spam);
        assert!(Content::classify(&report("reject", -1.0, &[]), &config).spam);
        let symbols_only = ScannerConfig {
            phishing_symbols: vec!["TEST_PHISH".into()],
            ..ScannerConfig::default()
        };
        assert!(Content::classify(&report("no action", 0.0, &["TEST_PHISH"]), &symbols_only).phishing);
        assert!(!Content::classify(&report("no action", 0.0, &["PHISHING"]), &symbols_only).phishing);
    }
}
