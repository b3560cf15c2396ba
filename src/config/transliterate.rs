//! ASCII for HTTP headers: the hub's `editorName` header takes ASCII only, while a commune's
//! name has accents. Pure.

/// `"Commune de Saint-Étienne"` → `"Commune de Saint-Etienne"`: French (and common Latin)
/// accented letters lose their accent, ligatures are spelt out (œ → oe, æ → ae, ß → ss),
/// typographic quotes and dashes become their ASCII cousins, and anything else outside ASCII
/// becomes `?`. Control characters are left as they are: the caller refuses them.
pub fn to_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
            continue;
        }
        let replacement: &str = match c {
            'à' | 'â' | 'ä' | 'á' | 'ã' | 'å' => "a",
            'À' | 'Â' | 'Ä' | 'Á' | 'Ã' | 'Å' => "A",
            'ç' => "c",
            'Ç' => "C",
            'é' | 'è' | 'ê' | 'ë' => "e",
            'É' | 'È' | 'Ê' | 'Ë' => "E",
            'î' | 'ï' | 'í' | 'ì' => "i",
            'Î' | 'Ï' | 'Í' | 'Ì' => "I",
            'ô' | 'ö' | 'ó' | 'ò' | 'õ' | 'ø' => "o",
            'Ô' | 'Ö' | 'Ó' | 'Ò' | 'Õ' | 'Ø' => "O",
            'ù' | 'û' | 'ü' | 'ú' => "u",
            'Ù' | 'Û' | 'Ü' | 'Ú' => "U",
            'ÿ' | 'ý' => "y",
            'Ÿ' | 'Ý' => "Y",
            'ñ' => "n",
            'Ñ' => "N",
            'œ' => "oe",
            'Œ' => "OE",
            'æ' => "ae",
            'Æ' => "AE",
            'ß' => "ss",
            '’' | '‘' | '‚' | '′' | 'ʼ' => "'",
            '“' | '”' | '„' | '«' | '»' | '″' => "\"",
            '‐' | '‑' | '‒' | '–' | '—' | '−' => "-",
            '…' => "...",
            '\u{a0}' | '\u{202f}' | '\u{2009}' => " ",
            _ => "?",
        };
        out.push_str(replacement);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn french_names_become_ascii() {
        assert_eq!(
            to_ascii("Commune de Saint-Étienne"),
            "Commune de Saint-Etienne"
        );
        assert_eq!(to_ascii("L’Haÿ-les-Roses"), "L'Hay-les-Roses");
        assert_eq!(to_ascii("Cœur d’Œuvre — Æ ß"), "Coeur d'OEuvre - AE ss");
        assert_eq!(
            to_ascii("Châlons-en-Champagne, Ç à ù"),
            "Chalons-en-Champagne, C a u"
        );
        assert_eq!(to_ascii("Ville 東京"), "Ville ??");
    }
}
