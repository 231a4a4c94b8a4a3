//! The handlers: search, tags, words, classes, status and probes, adding, listing and deleting images.

use super::*;
use crate::store::Cursor;

/// The loaded text space (zero-shot at least).
pub(super) fn space_of(engine: &Library) -> ApiResult<std::sync::Arc<crate::joint::TextSpace>> {
    engine
        .loaded_text_space()
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the text space is not loaded"))
}

pub(super) fn tags_of(engine: &Library, raw: &[f32], k: usize, side: Option<Side>) -> ApiResult<Tags> {
    let space = space_of(engine)?;
    let side = space.side(side)?;
    Ok(space.tags(side, raw, k)?)
}

pub(super) fn run_search(state: &State, p: SearchParams, upload: Option<(Vec<u8>, String)>) -> ApiResult<SearchAnswer> {
    let k = check_k(p.k, 20)?;
    if let Some(m) = p.max_distance {
        if !(0.0..=2.0).contains(&m) {
            return Err(ApiError::bad_request(format!("max_distance must be between 0 and 2, got {m}")));
        }
    }
    let text = p.text.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if p.key.is_some() && upload.is_some() {
        return Err(ApiError::bad_request("give either key or an uploaded image, not both"));
    }
    let asked = match p.space.as_deref() {
        None | Some("") => None,
        Some("cnn") => Some(Space::Cnn),
        Some("joint") => Some(Space::Joint),
        Some(other) => return Err(ApiError::bad_request(format!("space must be cnn or joint, got \"{other}\""))),
    };
    let parts = query::Parts {
        image: p.key.is_some() || upload.is_some(),
        text: text.is_some(),
        class: p.class.is_some(),
        space: asked,
    };
    let space = parts.space()?;
    let filter = p.filter()?;
    let class_weights = match &p.class {
        Some(spec) => {
            let c = crate::backbone::resolve_class(spec)?;
            Some(
                lock(&state.embedder)
                    .model()
                    .class_weights()
                    .get(c)
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(crate::Error::from)?,
            )
        }
        None => None,
    };
    let uploaded = match &upload {
        Some((bytes, name)) => Some(embed_upload(state, bytes, name)?),
        None => None,
    };
    let requested_side = text_side(p.text_side.as_deref())?;
    // Another process (`index`, `train`) may have added images meanwhile.
    state.refresh_store()?;
    if space == Space::Joint || p.tags == Some(true) {
        // Another process may have trained a newer model meanwhile.
        state.refresh_model()?;
    }
    let engine = read(&state.engine);
    let image = match (uploaded, p.key) {
        (Some(e), _) => Some(e),
        (None, Some(key)) => Some(stored_embedding(&engine, key)?),
        (None, None) => None,
    };
    let joint = if space == Space::Joint { Some(space_of(&engine)?) } else { None };
    let assembled = query::assemble(space, image.clone(), text, class_weights, requested_side, joint.as_deref())?;
    let found = engine.search(&assembled, k, p.max_distance, &filter)?;
    let mut answer = SearchAnswer::new(&assembled, found, |f| {
        let o = image_out(f.key, &f.label, &f.path);
        Hit {
            rank: f.rank,
            key: f.key,
            label: o.label,
            file: o.file,
            path: None,
            distance: f.distance,
            thumbnail: Some(o.thumbnail),
            original: Some(o.original),
        }
    });
    answer.tags = match &image {
        Some(img) if p.tags == Some(true) => Some(tags_of(&engine, img, 8, requested_side)?),
        _ => None,
    };
    Ok(answer)
}

/// After an image is added: the store's graph extended, and its content
/// given its vector on every text side.
pub(super) fn refresh(engine: &mut Library, hash: &str) -> crate::Result<()> {
    engine.after_add(Some(&[hash.to_owned()]))?;
    Ok(())
}

/// Keeps a label to one safe folder name.
pub(super) fn clean_label(label: &str) -> String {
    // At most 64 characters: it becomes a folder name (a long one was a 500 naming a server path).
    let cleaned: String = label
        .trim()
        .chars()
        .take(64)
        .map(|c| if c.is_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '_') {
        "uploads".into()
    } else {
        cleaned
    }
}

// ---------------------------------------------------------------- handlers

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok", body = String)))]
pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers (a database may be down: 503 until it is back).
#[utoipa::path(get, path = "/readyz", responses((status = 200, description = "ready", body = String), (status = 503, body = ErrorOut)))]
pub(super) async fn readyz(Shared(state): Shared<AppState>) -> ApiResult<&'static str> {
    blocking(&state, |st| {
        read(&st.engine).store().ping()?;
        Ok("ready")
    })
    .await
}

/// Prometheus metrics: request counts and latencies by route, index size.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", body = String)))]
pub(super) async fn metrics_text(Shared(state): Shared<AppState>) -> ApiResult<Response> {
    let s = state.clone();
    let text = blocking(&state, move |st| {
        let engine = read(&st.engine);
        let images = engine.store().len()?;
        // A database keeps one vector per content; the embedded store counts its rows.
        let rows = engine.store().vector_rows()?;
        Ok(s.metrics.render(images, rows, engine.loaded_text_space().is_some_and(|t| t.trained.is_some())))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The index's size and models.
#[utoipa::path(get, path = "/api/status", responses((status = 200, body = StatusOut)))]
pub(super) async fn status(Shared(state): Shared<AppState>) -> ApiResult<Json<StatusOut>> {
    blocking(&state, |st| {
        let engine = read(&st.engine);
        let text = engine.loaded_text_space();
        Ok(Json(StatusOut {
            images: engine.store().len()?,
            backbone: st.options.backbone.name().to_owned(),
            words: crate::text::EncoderId::of(&st.words).to_string(),
            joint_labels: text
                .as_ref()
                .and_then(|t| t.trained.as_ref())
                .map(|(_, m)| m.info.labels.iter().map(|(l, _)| l.clone()).collect()),
            text_side: text.as_ref().and_then(|t| t.side(None).ok()),
            hnsw: engine.store().searches_a_graph(),
        }))
    })
    .await
}

/// Search by an indexed image (`key`), by words (`text`), or both; class-weighted with `class`.
#[utoipa::path(get, path = "/api/search", params(SearchParams), responses(
    (status = 200, body = SearchAnswer), (status = 400, body = ErrorOut), (status = 404, body = ErrorOut), (status = 409, description = "needs a trained joint model", body = ErrorOut)))]
pub(super) async fn search_get(
    Shared(state): Shared<AppState>,
    Query(p): Query<SearchParams>,
) -> ApiResult<Json<SearchAnswer>> {
    blocking(&state, move |st| run_search(st, p, None).map(Json)).await
}

/// Search by an uploaded image (multipart field `image`), optionally with text, class, k, max_distance, space.
#[utoipa::path(post, path = "/api/search", request_body(content = SearchForm, content_type = "multipart/form-data"), responses(
    (status = 200, body = SearchAnswer), (status = 400, body = ErrorOut), (status = 413, body = ErrorOut)))]
pub(super) async fn search_post(
    Shared(state): Shared<AppState>,
    multipart: Multipart,
) -> ApiResult<Json<SearchAnswer>> {
    let form = read_form(multipart).await?;
    let p = SearchParams {
        key: field(&form, "key")?,
        text: field(&form, "text")?,
        class: field(&form, "class")?,
        k: field(&form, "k")?,
        max_distance: field(&form, "max_distance")?,
        space: field(&form, "space")?,
        tags: field(&form, "tags")?,
        text_side: field(&form, "text_side")?,
        under: field(&form, "under")?,
        label: field(&form, "label")?,
        after: field(&form, "after")?,
        before: field(&form, "before")?,
        camera: field(&form, "camera")?,
    };
    let image = form.image;
    blocking(&state, move |st| run_search(st, p, image).map(Json)).await
}

/// The nearest words of the whole vocabulary to an indexed image.
#[utoipa::path(get, path = "/api/tags", params(TagParams), responses((status = 200, body = Tags), (status = 404, body = ErrorOut), (status = 409, body = ErrorOut)))]
pub(super) async fn tags_get(Shared(state): Shared<AppState>, Query(p): Query<TagParams>) -> ApiResult<Json<Tags>> {
    let k = check_k(p.k, 10)?;
    let key = p.key.ok_or_else(|| ApiError::bad_request("give key (or POST an image)"))?;
    let side = text_side(p.text_side.as_deref())?;
    blocking(&state, move |st| {
        st.refresh_store()?;
        st.refresh_model()?;
        let engine = read(&st.engine);
        let raw = stored_embedding(&engine, key)?;
        tags_of(&engine, &raw, k, side).map(Json)
    })
    .await
}

/// The nearest words to an uploaded image (multipart field `image`).
#[utoipa::path(post, path = "/api/tags", request_body(content = TagForm, content_type = "multipart/form-data"), responses((status = 200, body = Tags), (status = 400, body = ErrorOut), (status = 409, body = ErrorOut)))]
pub(super) async fn tags_post(Shared(state): Shared<AppState>, multipart: Multipart) -> ApiResult<Json<Tags>> {
    let form = read_form(multipart).await?;
    let k = check_k(field(&form, "k")?, 10)?;
    let side = text_side(field::<String>(&form, "text_side")?.as_deref())?;
    let (bytes, name) =
        form.image.ok_or_else(|| ApiError::bad_request("no image: send it in the multipart field \"image\""))?;
    blocking(&state, move |st| {
        st.refresh_model()?;
        let raw = embed_upload(st, &bytes, &name)?;
        let engine = read(&st.engine);
        tags_of(&engine, &raw, k, side).map(Json)
    })
    .await
}

/// Nearest words to a word or words (`king -man woman`).
#[utoipa::path(get, path = "/api/words", params(WordParams), responses((status = 200, body = [crate::words::Neighbour]), (status = 400, body = ErrorOut)))]
pub(super) async fn words(
    Shared(state): Shared<AppState>,
    Query(p): Query<WordParams>,
) -> ApiResult<Json<Vec<crate::words::Neighbour>>> {
    let k = check_k(p.k, 10)?;
    blocking(&state, move |st| {
        let found = st.words.nearest_to_text(&p.q, k)?;
        Ok(Json(found))
    })
    .await
}

/// ImageNet classes for what is typed so far.
#[utoipa::path(get, path = "/api/classes", params(ClassParams), responses((status = 200, body = [ClassOut])))]
pub(super) async fn classes(Query(p): Query<ClassParams>) -> ApiResult<Json<Vec<ClassOut>>> {
    let n = check_k(p.n, 10)?;
    let all = crate::backbone::imagenet_classes();
    Ok(Json(
        crate::backbone::suggest_classes(&p.q, n)
            .into_iter()
            .map(|i| ClassOut { index: i, name: all[i].name.clone() })
            .collect(),
    ))
}

/// Groups of near-duplicate images (re-encoded, resized or cropped copies),
/// largest first. Keeping one is deleting the others from the index
/// (`DELETE /api/images/{key}`); files in your folders are never touched.
#[utoipa::path(get, path = "/api/duplicates", params(DuplicateParams), responses((status = 200, body = DuplicatesOut), (status = 400, body = ErrorOut)))]
pub(super) async fn duplicates(
    Shared(state): Shared<AppState>,
    Query(p): Query<DuplicateParams>,
) -> ApiResult<Json<DuplicatesOut>> {
    let max_distance = p.max_distance.unwrap_or(crate::duplicates::default_max_distance(state.options.backbone));
    if !(0.0..=2.0).contains(&max_distance) {
        return Err(ApiError::bad_request(format!("max_distance must be between 0 and 2, got {max_distance}")));
    }
    blocking(&state, move |st| {
        st.refresh_store()?;
        let engine = read(&st.engine);
        let groups: Vec<DuplicateGroup> = crate::duplicates::groups(engine.store(), max_distance)?
            .iter()
            .map(|g| DuplicateGroup {
                redundant_bytes: g.redundant_bytes(),
                images: g
                    .members
                    .iter()
                    .map(|m| DuplicateOut {
                        image: image_out(m.image.key, &m.image.label, &m.image.path),
                        size: m.image.size,
                        distance: m.distance,
                    })
                    .collect(),
            })
            .collect();
        let redundant_bytes = groups.iter().map(|g| g.redundant_bytes).sum();
        Ok(Json(DuplicatesOut { max_distance, redundant_bytes, groups }))
    })
    .await
}

/// Upload an image into the index (multipart `image`, optional `label`).
#[utoipa::path(post, path = "/api/images", request_body(content = AddForm, content_type = "multipart/form-data"), responses(
    (status = 201, description = "added", body = ImageOut), (status = 200, description = "the same bytes were there already: that image", body = ImageOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut), (status = 413, body = ErrorOut)))]
pub(super) async fn add_image(Shared(state): Shared<AppState>, multipart: Multipart) -> ApiResult<Response> {
    let form = read_form(multipart).await?;
    let given_label = form.fields.get("label").map(|l| clean_label(l));
    let label = given_label.clone().unwrap_or_else(|| "uploads".into());
    let (bytes, name) =
        form.image.ok_or_else(|| ApiError::bad_request("no image: send it in the multipart field \"image\""))?;
    blocking(&state, move |st| {
        let hash = {
            use sha2::Digest;
            format!("{:x}", sha2::Sha256::digest(&bytes))
        };
        // The same bytes again: the same image (and key), 200; a new label is recorded on an upload.
        {
            let mut engine = write(&st.engine);
            if let Some(known) = engine.store().by_hash(&hash)?.into_iter().next() {
                let mut r = known;
                let uploaded = r.path.starts_with(DB_UPLOADS)
                    || st.uploads.as_ref().is_some_and(|u| crate::files::text_to_path(&r.path).starts_with(u));
                if let (true, Some(new_label)) = (uploaded, &given_label) {
                    if new_label != &r.label {
                        engine.store_mut().update_location(r.key, &r.path, r.size, r.mtime, new_label)?;
                        r.label = new_label.clone();
                    }
                }
                return Ok(created(StatusCode::OK, image_out(r.key, &r.label, &r.path)));
            }
        }
        // The current model, so the new image gets its joint embedding.
        st.refresh_model()?;
        // Decoded and embedded before anything is written.
        let embedding = embed_upload(st, &bytes, &name)?;
        let ext = if crate::backbone::is_heif(&bytes) {
            "heic"
        } else if crate::backbone::raw::is_raw(&bytes) {
            crate::backbone::raw::kind(&bytes).0
        } else {
            image::guess_format(&bytes).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("img")
        };
        let file = upload_file_name(&name, ext, &hash);
        let mut engine = write(&st.engine);
        let r = match &st.uploads {
            Some(uploads) => {
                let dir = uploads.join(&label);
                std::fs::create_dir_all(&dir).map_err(|e| crate::Error::io(&dir, e))?;
                let path = dir.join(&file);
                if !path.exists() {
                    crate::files::write_atomic(&path, &bytes)?;
                }
                crate::indexer::add_file(engine.store_mut(), &path, |_| Ok(embedding))?
            }
            None => add_to_database(
                engine.store_mut(),
                &format!("{DB_UPLOADS}{label}/{file}"),
                &hash,
                &label,
                &bytes,
                embedding,
            )?,
        };
        refresh(&mut engine, &r.hash)?;
        Ok(created(StatusCode::CREATED, image_out(r.key, &r.label, &r.path)))
    })
    .await
}

/// An added (201) or already present (200) image, with its `Location`.
pub(super) fn created(status: StatusCode, image: ImageOut) -> Response {
    let location = format!("/api/images/{}", image.key);
    (status, [(header::LOCATION, location)], Json(image)).into_response()
}

/// The stored name of an upload: the sender's file name (made safe), with
/// a piece of the content hash so two different files of one name never meet.
pub(super) fn upload_file_name(name: &str, ext: &str, hash: &str) -> String {
    let base = Path::new(name).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let safe: String = base
        .chars()
        .take(80)
        .map(|c| if c.is_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    let safe = safe.trim_matches('.');
    if safe.is_empty() {
        format!("{}.{ext}", &hash[..16])
    } else {
        format!("{safe}-{}.{ext}", &hash[..8])
    }
}

/// Index a file already on the server, under one of the indexed folders.
#[utoipa::path(post, path = "/api/images/by-path", request_body = AddByPath, responses(
    (status = 201, body = ImageOut), (status = 400, body = ErrorOut), (status = 401, body = ErrorOut), (status = 403, body = ErrorOut)))]
pub(super) async fn add_image_by_path(
    Shared(state): Shared<AppState>,
    Json(body): Json<AddByPath>,
) -> ApiResult<(StatusCode, Json<ImageOut>)> {
    blocking(&state, move |st| {
        let outside =
            || ApiError::new(StatusCode::FORBIDDEN, format!("{}: not a file under the indexed folders", body.path));
        let path = Path::new(&body.path).canonicalize().map_err(|_| outside())?;
        if !path.is_file() || !st.roots.iter().any(|r| path.starts_with(r)) {
            return Err(outside());
        }
        st.refresh_model()?;
        let mut engine = write(&st.engine);
        let r =
            crate::indexer::add_file(engine.store_mut(), &path, |p| Ok(lock(&st.embedder).embed_file(p)?.embedding))?;
        refresh(&mut engine, &r.hash)?;
        Ok((StatusCode::CREATED, Json(image_out(r.key, &r.label, &r.path))))
    })
    .await
}

/// One indexed image.
#[utoipa::path(get, path = "/api/images/{key}", params(("key" = i64, Path)), responses((status = 200, body = ImageOut), (status = 404, body = ErrorOut)))]
pub(super) async fn image_info(
    Shared(state): Shared<AppState>,
    UrlPath(key): UrlPath<i64>,
) -> ApiResult<Json<ImageOut>> {
    blocking(&state, move |st| {
        let engine = read(&st.engine);
        let r = engine
            .store()
            .by_key(key)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
        let uploaded = r.path.starts_with(DB_UPLOADS);
        let path = if uploaded { r.path.clone() } else { crate::files::display_path(&r.path) };
        Ok(Json(ImageOut { path: Some(path), ..image_out(r.key, &r.label, &r.path) }))
    })
    .await
}

/// The collection a page at a time, newest first (by when added, or by when
/// taken), filtered like searches (the page's browse grid).
#[utoipa::path(get, path = "/api/images", params(PageParams), responses((status = 200, body = ImagePage), (status = 400, body = ErrorOut)))]
pub(super) async fn list_images(
    Shared(state): Shared<AppState>,
    Query(p): Query<PageParams>,
) -> ApiResult<Json<ImagePage>> {
    let limit = p.limit.unwrap_or(60);
    if limit == 0 || limit > MAX_K {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_K}, got {limit}")));
    }
    blocking(&state, move |st| {
        let sort = p.sort.unwrap_or_default();
        let cursor = p.cursor.as_deref().map(|c| Cursor::parse(c, sort)).transpose()?;
        let filter = crate::query::filter(
            p.under.clone(),
            p.label.as_deref(),
            p.after.as_deref(),
            p.before.as_deref(),
            p.camera.as_deref(),
        )?;
        let engine = read(&st.engine);
        let mut records = engine.store().list(sort, cursor, limit + 1, &filter)?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next_cursor = if more { records.last().map(|r| Cursor::after(r, sort).to_text(sort)) } else { None };
        let images = records.iter().map(|r| image_out(r.key, &r.label, &r.path)).collect();
        Ok(Json(ImagePage { images, next_cursor, total: engine.store().len()? }))
    })
    .await
}

/// Remove an image from the index (an uploaded file is deleted too; files
/// in your folders are kept unless `delete_file=true` asks, and then only a
/// file under a folder this server serves).
#[utoipa::path(delete, path = "/api/images/{key}", params(("key" = i64, Path), DeleteParams), responses((status = 204), (status = 401, body = ErrorOut), (status = 403, body = ErrorOut), (status = 404, body = ErrorOut), (status = 500, body = ErrorOut)))]
pub(super) async fn delete_image(
    Shared(state): Shared<AppState>,
    UrlPath(key): UrlPath<i64>,
    Query(p): Query<DeleteParams>,
) -> ApiResult<StatusCode> {
    blocking(&state, move |st| {
        let mut engine = write(&st.engine);
        let r = engine
            .store()
            .by_key(key)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no image with key {key}")))?;
        let path = crate::files::text_to_path(&r.path);
        if p.delete_file == Some(true) && !r.path.starts_with(DB_UPLOADS) {
            // The file goes first: if it cannot, the index keeps the image and says why.
            let served =
                path.canonicalize().ok().filter(|c| c.is_file() && st.roots.iter().any(|root| c.starts_with(root)));
            let Some(file) = served else {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "image {key}: {} is not a file under a folder this server serves, so it is left alone \
                         (nothing was deleted); remove it from the index without delete_file",
                        path.display()
                    ),
                ));
            };
            std::fs::remove_file(&file).map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("image {key}: cannot delete {} ({e}); nothing was deleted", file.display()),
                )
            })?;
        }
        // A database drops an upload's bytes with its last image.
        engine.delete(&[key])?;
        if let Some(uploads) = &st.uploads {
            let uploads = uploads.canonicalize().unwrap_or_else(|_| uploads.clone());
            if path.starts_with(&uploads) {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(StatusCode::NO_CONTENT)
    })
    .await
}

/// Where uploads kept in a database are said to be (their paths are names, not files).
pub(super) const DB_UPLOADS: &str = "db:uploads/";

/// Adds an upload to a store that keeps uploads (a database) with its bytes; the same content
/// under the same label is the same image.
pub(super) fn add_to_database(
    store: &mut dyn crate::store::ImageStore,
    path: &str,
    hash: &str,
    label: &str,
    bytes: &[u8],
    embedding: Vec<f32>,
) -> crate::Result<crate::store::ImageRecord> {
    use crate::store::{NewImage, NewVector};
    if let Some(r) = store.by_path(path)? {
        return Ok(r);
    }
    let vector = match store.by_hash(hash)?.into_iter().next() {
        Some(original) => NewVector::SameAs { row: original.row, norm: original.norm },
        None => NewVector::Embedding(embedding),
    };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    let image = NewImage {
        path: path.to_owned(),
        hash: hash.to_owned(),
        size: bytes.len() as u64,
        mtime: now,
        meta: crate::metadata::of_bytes(bytes, now),
        label: label.to_owned(),
        vector,
    };
    store.add_upload(&image, bytes)?;
    store.by_path(path)?.ok_or_else(|| crate::Error::Msg(format!("{path}: not found after adding")))
}
