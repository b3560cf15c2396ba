//! A message's content as a small document, and its two renderings: plain text and HTML
//! (pure). The digest and alert builders decide *what* to say once; this file decides how
//! it looks. Everything here is escaped for HTML and stripped of control characters for
//! text, since external ids and errors come from outside.

use chrono::TimeZone;

use crate::config::cron::ZONE;

/// A message body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doc {
    pub title: String,
    /// Paragraphs under the title.
    pub intro: Vec<String>,
    pub sections: Vec<Section>,
    /// A last line in small print.
    pub footer: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub heading: String,
    /// 1: a main part (a subscription, "À traiter"); 2: a part within it.
    pub level: u8,
    pub blocks: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Para(String),
    Items(Vec<String>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
}

/// A Paris local time the French way: `25/11/2026 08:00`.
pub fn fr_time(ms: i64) -> String {
    match ZONE.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%d/%m/%Y %H:%M").to_string(),
        None => "?".into(),
    }
}

/// A Paris local date: `25/11/2026`.
pub fn fr_date(ms: i64) -> String {
    match ZONE.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%d/%m/%Y").to_string(),
        None => "?".into(),
    }
}

/// `n` and the singular or plural form (French: 0 and 1 are singular).
pub fn count(n: usize, one: &str, many: &str) -> String {
    if n <= 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Text from outside, made safe to show: no control characters, at most `max` characters.
pub fn clean(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

pub fn to_text(doc: &Doc) -> String {
    let mut out = String::new();
    out.push_str(&doc.title);
    out.push('\n');
    out.push_str(&"=".repeat(doc.title.chars().count()));
    out.push_str("\n\n");
    for p in &doc.intro {
        out.push_str(p);
        out.push_str("\n\n");
    }
    for s in &doc.sections {
        match s.level {
            1 => {
                out.push_str(&s.heading);
                out.push('\n');
                out.push_str(&"-".repeat(s.heading.chars().count()));
                out.push('\n');
            }
            _ => {
                out.push_str(&s.heading);
                out.push_str(" :\n");
            }
        }
        for b in &s.blocks {
            match b {
                Block::Para(p) => {
                    out.push_str(p);
                    out.push('\n');
                }
                Block::Items(items) => {
                    for i in items {
                        out.push_str("  - ");
                        out.push_str(i);
                        out.push('\n');
                    }
                }
                Block::Table { head, rows } => {
                    for r in rows {
                        out.push_str("  - ");
                        let cells: Vec<String> = r
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| !c.is_empty())
                            .map(|(i, c)| match (i, head.get(i)) {
                                (0, _) | (_, None) => c.clone(),
                                (_, Some(h)) => format!("{} : {c}", h.to_lowercase()),
                            })
                            .collect();
                        out.push_str(&cells.join(" · "));
                        out.push('\n');
                    }
                }
            }
        }
        out.push('\n');
    }
    if !doc.footer.is_empty() {
        out.push_str("-- \n");
        out.push_str(&doc.footer);
        out.push('\n');
    }
    out
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub fn to_html(doc: &Doc) -> String {
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"fr\">\n<head><meta charset=\"utf-8\"><title>");
    out.push_str(&esc(&doc.title));
    out.push_str("</title></head>\n<body style=\"font-family: sans-serif; font-size: 14px; color: #222;\">\n");
    out.push_str(&format!(
        "<h1 style=\"font-size: 20px;\">{}</h1>\n",
        esc(&doc.title)
    ));
    for p in &doc.intro {
        out.push_str(&format!("<p>{}</p>\n", esc(p)));
    }
    for s in &doc.sections {
        match s.level {
            1 => out.push_str(&format!(
                "<h2 style=\"font-size: 17px; border-bottom: 1px solid #ccc;\">{}</h2>\n",
                esc(&s.heading)
            )),
            _ => out.push_str(&format!(
                "<h3 style=\"font-size: 15px;\">{}</h3>\n",
                esc(&s.heading)
            )),
        }
        for b in &s.blocks {
            match b {
                Block::Para(p) => out.push_str(&format!("<p>{}</p>\n", esc(p))),
                Block::Items(items) => {
                    out.push_str("<ul>\n");
                    for i in items {
                        out.push_str(&format!("<li>{}</li>\n", esc(i)));
                    }
                    out.push_str("</ul>\n");
                }
                Block::Table { head, rows } => {
                    out.push_str(
                        "<table style=\"border-collapse: collapse;\" cellpadding=\"4\">\n<tr>",
                    );
                    for h in head {
                        out.push_str(&format!(
                            "<th style=\"text-align: left; border-bottom: 1px solid #999;\">{}</th>",
                            esc(h)
                        ));
                    }
                    out.push_str("</tr>\n");
                    for r in rows {
                        out.push_str("<tr>");
                        for c in r {
                            out.push_str(&format!(
                                "<td style=\"border-bottom: 1px solid #eee;\">{}</td>",
                                esc(c)
                            ));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
            }
        }
    }
    if !doc.footer.is_empty() {
        out.push_str(&format!(
            "<p style=\"color: #777; font-size: 12px;\">{}</p>\n",
            esc(&doc.footer)
        ));
    }
    out.push_str("</body>\n</html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_time_follows_daylight_saving() {
        // 2026-01-15 07:00 UTC is 08:00 in Paris (winter); 2026-07-15 06:00 UTC too (summer).
        assert_eq!(fr_time(1_768_460_400_000), "15/01/2026 08:00");
        assert_eq!(fr_time(1_784_095_200_000), "15/07/2026 08:00");
    }

    #[test]
    fn outside_text_is_escaped_and_cleaned() {
        let doc = Doc {
            title: "t".into(),
            sections: vec![Section {
                heading: "h".into(),
                level: 1,
                blocks: vec![Block::Items(vec![clean("<script>\r\nBcc: x", 100)])],
            }],
            ..Default::default()
        };
        let html = to_html(&doc);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(!to_text(&doc).contains('\r'));
        assert_eq!(clean("abcdef", 3), "abc…");
    }
}
