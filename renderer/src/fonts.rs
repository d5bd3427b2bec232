//! The fonts a page may use, embedded in the binary.
//!
//! Pages must be byte-identical on every machine (the bundled model is trained on exactly these pixels), so the renderer never
//! reads system fonts: the faces below are compiled in and are the only ones layout can pick from. They come from Debian's
//! `fonts-noto-core` and `fonts-droid-fallback` packages; their licences sit beside them in `renderer/fonts/`.

use std::collections::HashMap;
use std::sync::Arc;

use cosmic_text::fontdb;

/// One embedded face: its file bytes and the family it declares.
struct EmbeddedFont {
    data: &'static [u8],
}

/// Latin, Greek and Cyrillic; the body text face.
const NOTO_SANS_REGULAR: &[u8] = include_bytes!("../fonts/NotoSans-Regular.ttf");
/// Bold companion of Noto Sans, used for chat role labels.
const NOTO_SANS_BOLD: &[u8] = include_bytes!("../fonts/NotoSans-Bold.ttf");
const NOTO_SANS_ARABIC: &[u8] = include_bytes!("../fonts/NotoSansArabic-Regular.ttf");
const NOTO_SANS_HEBREW: &[u8] = include_bytes!("../fonts/NotoSansHebrew-Regular.ttf");
const NOTO_SANS_DEVANAGARI: &[u8] = include_bytes!("../fonts/NotoSansDevanagari-Regular.ttf");
/// CJK (Han, Kana, Hangul) and a wide fallback repertoire, 4 MB instead of Noto CJK's 20 MB.
const DROID_SANS_FALLBACK: &[u8] = include_bytes!("../fonts/DroidSansFallbackFull.ttf");

const EMBEDDED: [EmbeddedFont; 6] = [
    EmbeddedFont {
        data: NOTO_SANS_REGULAR,
    },
    EmbeddedFont {
        data: NOTO_SANS_BOLD,
    },
    EmbeddedFont {
        data: NOTO_SANS_ARABIC,
    },
    EmbeddedFont {
        data: NOTO_SANS_HEBREW,
    },
    EmbeddedFont {
        data: NOTO_SANS_DEVANAGARI,
    },
    EmbeddedFont {
        data: DROID_SANS_FALLBACK,
    },
];

/// The family name body text asks for; fallback to the other faces is done by cosmic-text per character.
pub const BODY_FAMILY: &str = "Noto Sans";

/// A face as the rasterizer needs it: raw bytes and the face index inside the file.
#[derive(Clone, Copy, Debug)]
pub struct FaceData {
    pub data: &'static [u8],
    pub index: u32,
}

/// The embedded fonts loaded into a cosmic-text font system, with a map back from layout ids to face bytes.
pub struct Fonts {
    pub system: cosmic_text::FontSystem,
    faces: HashMap<fontdb::ID, FaceData>,
}

impl std::fmt::Debug for Fonts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fonts")
            .field("faces", &self.faces.len())
            .finish()
    }
}

impl Fonts {
    /// Loads every embedded face. The locale is fixed so that fallback order never depends on the machine.
    pub fn embedded() -> Self {
        let mut db = fontdb::Database::new();
        let mut faces = HashMap::new();
        for font in &EMBEDDED {
            let source = fontdb::Source::Binary(Arc::new(font.data));
            for id in db.load_font_source(source) {
                if let Some(face) = db.face(id) {
                    faces.insert(
                        id,
                        FaceData {
                            data: font.data,
                            index: face.index,
                        },
                    );
                }
            }
        }
        db.set_sans_serif_family(BODY_FAMILY);
        let system = cosmic_text::FontSystem::new_with_locale_and_db("en-US".to_owned(), db);
        Self { system, faces }
    }

    /// The bytes of the face a laid-out glyph uses.
    pub fn face(&self, id: fontdb::ID) -> Option<FaceData> {
        self.faces.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_yields_a_face() {
        let fonts = Fonts::embedded();
        assert_eq!(fonts.faces.len(), EMBEDDED.len());
        let families: Vec<String> = fonts
            .system
            .db()
            .faces()
            .flat_map(|f| f.families.iter().map(|(n, _)| n.clone()))
            .collect();
        assert!(families.iter().any(|f| f == BODY_FAMILY), "{families:?}");
    }
}
