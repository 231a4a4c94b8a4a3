//! One collection of images: its store and what is derived from it (the
//! text space its text searches and tags use). The facade the CLI's
//! commands and the server's handlers both call: a command or a handler
//! parses, calls one of these, and prints or answers.
//!
//! What a store keeps for itself (a folder's HNSW graph and text-side
//! files, a database's indexes and rows) stays behind [`ImageStore`]; the
//! library decides *when* it is brought up to date: after images were
//! added ([`Library::after_add`]), when another process committed
//! ([`Library::refresh`]), when another model was trained
//! ([`Library::text_space`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backbone::Backbone;
use crate::joint::{Side, TextSpace};
use crate::query::{Assembled, Found};
use crate::store::{Checked, Filter, ImageRecord, ImageStore, NewModel, SavedModel};
use crate::{Error, Result};

/// Where a library is and what it is read with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The store: a folder, or a `postgres://` URL.
    pub db: PathBuf,
    /// The model directory (networks, encoders, the tag vocabulary).
    pub models: PathBuf,
    pub backbone: Backbone,
    /// The word-vector file a joint model was trained with (default GloVe 50d).
    pub words_file: Option<PathBuf>,
}

/// How a library is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Readers (`search`, `tag`, `verify`, `duplicates`): nothing is
    /// created, migrated or written; a folder store must exist.
    Read,
    /// Writers (`index`, `train`, `serve`): the store is made if missing.
    Write,
}

/// What [`Library::after_add`] brought up to date.
#[derive(Debug, Clone, Default)]
pub struct Upkeep {
    /// Rows the store's own graph covers (a folder's HNSW), if it has one.
    pub graph_rows: Option<usize>,
    /// Images with a vector on the trained side, once a model is trained.
    pub trained_rows: Option<usize>,
}

/// A store with its text space.
pub struct Library {
    store: Box<dyn ImageStore>,
    settings: Settings,
    /// The text space once loaded.
    text: Option<Loaded>,
}

/// A loaded text space.
struct Loaded {
    /// The store's model id it was loaded with.
    model: Option<i64>,
    space: Arc<TextSpace>,
    /// The sides whose image vectors are current with the store.
    synced: std::sync::Mutex<Vec<Side>>,
}

impl Loaded {
    /// Makes `side`'s image vectors current in `store`, unless already done.
    fn sync(&self, store: &dyn ImageStore, side: Side) -> Result<()> {
        let mut synced = self.synced.lock().unwrap_or_else(|e| e.into_inner());
        if !synced.contains(&side) {
            self.space.sync(side, store, None)?;
            synced.push(side);
        }
        Ok(())
    }
}

impl Library {
    /// Opens the store `settings.db` names.
    pub fn open(settings: Settings, access: Access) -> Result<Self> {
        let (db, backbone) = (&settings.db, settings.backbone);
        let dim = backbone.config().embedding_dim();
        let store: Box<dyn ImageStore> = match access {
            Access::Write => crate::store::open(db, backbone.name(), dim)?,
            Access::Read if crate::store::is_database(db) => crate::store::open(db, backbone.name(), dim)?,
            Access::Read => {
                if !db.join("meta.sqlite").exists() {
                    return Err(Error::Msg(format!(
                        "no index at {}: run `imgsearch index <folder>` first (or pass --db)",
                        db.display()
                    )));
                }
                Box::new(crate::store::Store::open_read_only(db, backbone.name(), dim)?)
            }
        };
        Ok(Self::with_store(store, settings))
    }

    /// A library over a store opened elsewhere (an in-memory one in tests).
    pub fn with_store(store: Box<dyn ImageStore>, settings: Settings) -> Self {
        Self { store, settings, text: None }
    }

    pub fn store(&self) -> &dyn ImageStore {
        self.store.as_ref()
    }

    pub fn store_mut(&mut self) -> &mut dyn ImageStore {
        self.store.as_mut()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store's name for messages: its folder, or the database (no password).
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Whether the loaded text space (if any) is made with the store's
    /// current model (another process may have trained one since).
    pub fn text_space_is_current(&self) -> Result<bool> {
        match &self.text {
            Some(loaded) => Ok(loaded.model == self.store.model_id()?),
            None => Ok(false),
        }
    }

    /// The text space loaded so far, without looking for a newer model.
    pub fn loaded_text_space(&self) -> Option<Arc<TextSpace>> {
        self.text.as_ref().map(|l| l.space.clone())
    }

    /// The text space with the store's current model: loaded the first
    /// time and again after another model was trained. A side's image
    /// vectors are made current at its first search.
    pub fn text_space(&mut self) -> Result<Arc<TextSpace>> {
        if self.text_space_is_current()? {
            return Ok(self.loaded_text_space().expect("checked above"));
        }
        let model = self.store.model_id()?;
        let s = &self.settings;
        let space = Arc::new(TextSpace::of_store(&s.models, self.store.as_ref(), s.backbone, s.words_file.as_deref())?);
        self.text = Some(Loaded { model, space: space.clone(), synced: Default::default() });
        Ok(space)
    }

    /// Indexes the images under `roots` (new content embedded, moves and
    /// copies recognised, removed files dropped; `on_progress(done, total)`
    /// as files are embedded), then brings what is derived up to date.
    pub fn index(
        &mut self,
        embedder: &crate::backbone::Embedder,
        roots: &[PathBuf],
        on_progress: impl FnMut(usize, usize),
    ) -> Result<(crate::indexer::IndexReport, Upkeep)> {
        let report = crate::indexer::index_folders(self.store.as_mut(), embedder, roots, on_progress)?;
        let upkeep = self.after_add(None)?;
        Ok((report, upkeep))
    }

    /// Deletes images by key (their files are not touched).
    pub fn delete(&mut self, keys: &[i64]) -> Result<()> {
        self.store.delete(keys)
    }

    /// After images were added (all of them unknown, or the contents
    /// `hashes`): the store's graph extended, and each side of the loaded
    /// text space given their vectors.
    pub fn after_add(&mut self, hashes: Option<&[String]>) -> Result<Upkeep> {
        let graph_rows = self.store.upkeep()?;
        let mut trained_rows = None;
        if let Some(loaded) = &self.text {
            let space = &loaded.space;
            // Every side now, so text searches start at once.
            for side in space.sides() {
                space.sync(side, self.store.as_ref(), hashes)?;
                if side == Side::Trained && hashes.is_none() {
                    trained_rows = Some(self.store.text_side_len(&space.projection(side)?.store_side())?);
                }
            }
            if hashes.is_none() {
                *loaded.synced.lock().unwrap_or_else(|e| e.into_inner()) = space.sides();
            }
        }
        Ok(Upkeep { graph_rows, trained_rows })
    }

    /// Picks up what other processes committed (`index`, `train`,
    /// another `serve`) and brings what is derived up to date; says
    /// whether anything changed.
    pub fn refresh(&mut self) -> Result<bool> {
        if !self.store.is_stale()? || !self.store.refresh()? {
            return Ok(false);
        }
        self.after_add(None)?;
        Ok(true)
    }

    /// The `k` nearest images to `assembled` that `filter` lets through,
    /// farther than `max_distance` dropped (see [`crate::query::search`]).
    pub fn search(
        &self,
        assembled: &Assembled,
        k: usize,
        max_distance: Option<f32>,
        filter: &Filter,
    ) -> Result<Vec<Found>> {
        let text = self.text.as_ref();
        if let (Some(loaded), Some(side)) = (text, assembled.side) {
            loaded.sync(self.store.as_ref(), side)?;
        }
        crate::query::search(self.store.as_ref(), text.map(|l| l.space.as_ref()), assembled, k, max_distance, filter)
    }

    /// The raw CNN embedding of `spec`: an indexed key, an indexed file
    /// (by path or content), or else a new file embedded with `embed`.
    pub fn image_embedding(
        &self,
        spec: &str,
        embed: impl FnOnce(&Path) -> anyhow::Result<Vec<f32>>,
    ) -> anyhow::Result<Vec<f32>> {
        let store = self.store.as_ref();
        if let Some(r) = spec.parse::<i64>().ok().map(|k| store.by_key(k)).transpose()?.flatten() {
            return Ok(store.embedding(&r)?);
        }
        let path = PathBuf::from(spec);
        anyhow::ensure!(path.exists(), "{spec}: no such file, and not an indexed key");
        let canonical = crate::files::path_to_text(&path.canonicalize()?);
        let known = match store.by_path(&canonical)? {
            Some(r) => Some(r),
            None => store.by_hash(&crate::indexer::content_hash(&path)?)?.into_iter().next(),
        };
        match known {
            Some(r) => Ok(store.embedding(&r)?),
            None => embed(&path),
        }
    }

    /// The stored image with this key, or an error naming the key.
    pub fn image(&self, key: i64) -> Result<ImageRecord> {
        self.store.by_key(key)?.ok_or_else(|| Error::BadQuery(format!("no image with key {key}")))
    }

    /// Saves a trained model as the store's current one (every process on
    /// the store uses it from now) and gives every image its vector on the
    /// trained side. The text space is reloaded at its next use.
    pub fn save_model(&mut self, model: &NewModel<'_>, trained: &crate::joint::JointModel) -> Result<SavedModel> {
        let saved = self.store.save_model(model, trained)?;
        self.text = None;
        Ok(saved)
    }

    /// Checks the store and its derived files ([`ImageStore::verify`]),
    /// each text side recomputed when the text space can be loaded.
    pub fn verify(&mut self) -> Result<Checked> {
        // Loading the text space makes no side's vectors: `verify` recomputes them.
        let space = match self.text_space() {
            Ok(space) => space,
            Err(e) => {
                let mut checked = self.store.verify(&[])?;
                checked.sound.push(format!("text vectors: not checked ({e})"));
                return Ok(checked);
            }
        };
        let projections: Vec<_> = space.sides().into_iter().map(|s| space.projection(s)).collect::<Result<_>>()?;
        let sides: Vec<_> = projections.iter().map(|p| p.store_side()).collect();
        self.store.verify(&sides)
    }
}
