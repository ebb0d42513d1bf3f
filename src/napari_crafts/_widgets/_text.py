"""User-facing labels and tooltips of the widgets, in one place."""

#: The tissue choice's two words (the rest of its list is the viewer's Labels and Shapes layers).
TISSUE_AUTO, TISSUE_EVERYWHERE = "auto", "everywhere"

TOOLTIPS = {
    "labels": "Nuclear segmentation (instance or semantic labels, 0 = background).",
    "tissue": "Where the tissue is; the rest is glass. auto: from the nuclei (or the fluorescence signal): gaps "
    "between nuclei up to ~100 µm are tissue, larger glass. everywhere: no glass at all. A Labels layer (non-zero = "
    "tissue, any resolution, placed over the source) or a Shapes layer (its polygons). Tiles without tissue are "
    "glass and never reach the model; every tile with tissue is drawn, nuclei or not.",
    "model": "Models known to this install: 'demo' (trained on CMU-1, when bundled), 'tiny-demo' (random, for "
    "trying the plugin; its output is noise-like), folders used before, and diffusers folders in the models cache "
    "(~/.cache/napari-crafts/models or $NAPARI_CRAFTS_CACHE/models). CRAFTS-compatible weights are Stable "
    "Diffusion 1.5 + ControlNet in diffusers layout: model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
    "scheduler/ and controlnet/ (see the README).",
    "browse": "Choose a model folder on disk (diffusers layout: model_index.json at its root).",
    "hub": "A Hugging Face hub id (org/name) to download once into the hub cache; overrides the list while set.",
    "restore": "Every generation setting back to its default.",
    "advanced": "Scheduler, fast-mode settings, tiles, batch, device, ControlNet, negative prompt, pickle weights, "
    "watermark.",
    "watermark": "Put the invisible watermark in the pixels of the result (docs/watermark.md): it says 'synthetic' "
    "even when the metadata is lost. Unticked: the pixels are left alone and the provenance records that it was "
    "turned off. Tiles shown during a run are previews; the finished (or cancelled) layer is marked once.",
    "fast": "Fewer steps with a multistep scheduler, guidance for the first half, feature reuse and smaller tiles: "
    "much faster on a CPU, approximate (recorded in the provenance and the layer name).",
    "save": "Save the synthetic layer with its provenance record: OME-TIFF (.ome.tif), OME-Zarr (.ome.zarr) or PNG.",
    "region": "Which part of the labels to render.",
    "shapes": "Shapes layer whose last rectangle bounds the region.",
    "mpp": "Pixel size of the input in µm/px: from the file, the Pixel size widget, or the layer's scale when its unit "
    "is µm or the other layers are in µm. 0 = unknown: the model's own pixel size is assumed (you are told first).",
    "device": "Where the model runs: auto picks cuda, then mps, then cpu.",
    "allow_pickle": "Also load .bin/.ckpt (pickle) weights. Pickle files can run code when loaded: only for "
    "models from a source you trust. Off: safetensors only.",
    "channels": "Fluorescence channels: several single-channel layers, or one layer with a channel axis.",
    "channel_axis": "Axis of the channel dimension when one layer holds all channels.",
    "roles": "What the channel shows; 'other' channels are not given to the model. Guessed from the name.",
    "percentiles": "Each channel is stretched between these percentiles (computed once for the whole image).",
    "preset": "TCGA cancer types as in the paper's PathGen/TCGA captions; 'Use preset' writes the prompt.",
    "size": "Image side in the model's pixels; larger than the tile size is generated in blended tiles.",
    "count": "Number of images; image i uses seed + i.",
    "background": "For large regions and whole slides: run on dask.distributed workers into an OME-Zarr pyramid "
    "(resumable); the viewer stays free "
    "and the result opens here when done.",
    "workers": "Worker processes for the background job (each loads the model once).",
    "batch_output": "Where the background job writes its OME-Zarr pyramid: a new path ending in .zarr (Select file "
    "to browse).",
}

NO_CHANNELS = "Choose the fluorescence channel layer(s) first (e.g. DAPI)."
#: What the provenance says when the widgets' Watermark box was unticked.
WATERMARK_OFF = "napari: Watermark unticked"

ADVANCED_CLOSED, ADVANCED_OPEN = "▸ Advanced", "▾ Advanced"
MPP_UNKNOWN = "unknown: set it here or in Pixel size"
LONG_RUN = "This run would take {estimate}. Fast settings — {fast}."
NO_MPP_BEFORE_RUN = ("'{name}' has no pixel size: it is generated as if it were at the model's {mpp} µm/px. If "
                     "that is wrong, set µm/px in the widget or with Plugins › napari-crafts › Pixel size.")
NOT_A_MODEL_FOLDER = ("{path} is not a diffusers model folder (no model_index.json or config.json): choose the "
                      "folder that holds model_index.json, unet/, vae/, text_encoder/ and controlnet/.")


def output_name(source: str, exact: bool = True) -> str:
    """The output layer's name: what it is first, so the layer list never cuts 'synthetic' off."""
    return f"synthetic H&E (CRAFTS) · {source}" + ("" if exact else " [approximate]")

REGION_WHOLE, REGION_VIEW, REGION_SHAPES = "whole layer", "current view", "rectangle (Shapes layer)"
NO_BATCH_OUTPUT = "Choose where the background job writes its OME-Zarr (a path ending in .zarr)."
NO_LABELS = "Choose a Labels layer first: load nuclei or paint them with the Labels tools."
WIDGET_REGION_LIMIT = 8192 * 8192
TOO_LARGE = (
    "The region is {h}×{w} px: too large for the viewer. Pick a smaller region, or run "
    "`napari-crafts generate` for whole slides (it writes an OME-Zarr you can open here)."
)

# -- Compare -------------------------------------------------------------------------------------------------
COMPARE_TOOLTIPS = {
    "synthetic": "The generated H&E (RGB Image layer) to score.",
    "real": "The real H&E it should match (RGB Image layer), placed over it in the viewer.",
    "cache_interval": "1 = the full network on every step (exact). N > 1: the full UNet every N steps and only its "
    "shallow layers in between, reusing the deep features (DeepCache; fast mode: approximate, recorded in the "
    "provenance).",
    "region": "Which part of the real layer to compare (only where the synthetic layer covers it).",
    "shapes": "Shapes layer whose last rectangle bounds the region.",
    "tile": "Side of the tiles the metrics are computed on (and of the SSIM heat-map cells), in real-layer px. "
    "Until you change it, chosen at Compute for a readable heat map: about 8 tiles across the region's shorter side "
    "(32-1024 px).",
    "mask": "Compare only tissue pixels of the real layer (not background glass).",
    "clip": "Optional CLIP model for PLIP-FID/-I/-T: a local folder or a hub id such as 'vinid/plip'. "
    "Empty: pixel metrics only.",
    "prompt": "The prompt the synthetic image was generated with (for PLIP-T).",
    "toggle": "Show/hide the synthetic layer, to compare it with the real one underneath.",
    "opacity": "Opacity of the synthetic layer.",
}
NO_LAYERS = "Choose a synthetic and a real H&E Image layer first."
SAME_LAYER = "'{name}' is chosen as both synthetic and real H&E: pick two different layers."
NOT_RGB = "'{name}' is not an 8-bit RGB image ({what}): the metrics compare RGB H&E on a 0–255 scale."
NO_OVERLAP = ("'{syn}' and '{real}' do not overlap{where}: place them over each other (same scale and translate) "
              "or pick another region.")
RESAMPLED = "'{syn}' ({s} per px) was resampled onto the pixel grid of '{real}' ({r} per px) to compare them."
SHIFTED = "'{syn}' is offset from '{real}' by a fraction of a pixel: it was resampled onto the grid of '{real}'."
COMPARE_TOO_LARGE = ("The region is {h}×{w} px: too large to score here. Pick a smaller region, or run "
             "`napari-crafts evaluate` on the files.")
WIDGET_ADVICE = "give a local folder in 'CLIP model', or leave it empty for pixel metrics only"
HEAT_NAME = "SSIM per tile · {name}"
HEAT_LEGEND = "heat map: SSIM per tile, 0 (dark blue) → 1 (yellow); colour bar on the canvas"

# -- Buttons and napari's activity panel -----------------------------------------------------------------------
BUTTON_TOOLTIPS = {
    "generate": "Generate synthetic H&E with these settings into a new layer over the input; tiles appear as they "
    "finish. Progress here and in napari's activity panel (bottom right of the window).",
    "cancel": "Stop the run at the model's next step: the tiles already drawn stay (watermarked), nothing "
    "half-written is left.",
    "compute": "Score the synthetic layer against the real H&E under it, tile by tile (SSIM, PSNR, MSE, NCC; "
    "PLIP metrics with a CLIP model) and add an SSIM heat map over the region.",
    "preview": "Show the control image the model will receive (the channels as their roles map them, over the "
    "region) as a layer, without running the model.",
    "use_preset": "Write the chosen cancer type, tissue and magnification into the prompt as the paper's caption "
    "(the prompt follows the preset again until you edit it).",
    "set_pixel_size": "Give the chosen layers this µm/px: their scale in µm and their record. The docks generate at "
    "it and Save… writes it into the file.",
    "check_synthetic": "Look for the napari-crafts watermark in the layer's pixels and for a provenance record "
    "(its own or its file's), and say whether they match.",
    "run_anyway": "Run with the settings as they are, however long the estimate.",
    "prefer_reader": "Make napari-crafts napari's reader for slides and TIFF (.svs, .ndpi, .scn, .bif, .qptiff, "
    ".tif, ...): File › Open then gives them µm and one layer per IF channel without asking. Saved in napari's "
    "settings; undo in Preferences › Plugins › File extension readers.",
}
#: The file patterns "Open slides with napari-crafts" hands to our reader (napari's builtin one opens them in pixels,
#: a QPTIFF as one stack); the README's snippet lists the same.
SLIDE_PATTERNS = ("*.svs", "*.ndpi", "*.scn", "*.bif", "*.svslide", "*.qptiff", "*.tif", "*.tiff")
PREFERRED_READER = ("napari-crafts now opens {patterns} files (File › Open, drag and drop); change it in "
                    "Preferences › Plugins › File extension readers.")
#: The job's line in napari's activity panel.
ACTIVITY = "napari-crafts: {what}"

# -- Compare: what its numbers mean ----------------------------------------------------------------------------
COMPARE_MEANING = (
    "Reading them: SSIM 1 and NCC 1 would be a pixel-for-pixel copy. A generative model draws plausible tissue, not "
    "the same cells at the same pixels, so even a good one scores low (the demo model on held-out CMU-1 from "
    "labels: SSIM 0.16, PSNR 12.4 dB, NCC 0.42; a random model: 0.03, 10.0 dB, -0.08). Compare models on the "
    "same region."
)

# -- Live paint (Labels → H&E) -----------------------------------------------------------------------------------
TOOLTIPS["live"] = (
    "Live paint: generate the region once with the fastest settings the model offers (its few-step student when "
    "it declares one, else the fast settings), then every edit of the labels (brush, fill, "
    "erase, undo/redo, a script's refresh()) redraws only the tiles under it, 250 ms after the last edit. The rest "
    "stays as it was (unless the tissue extent changes: then the invisible watermark is redone everywhere); the "
    "result equals a fresh run on the edited labels with the same settings. The record lists each redrawn box.")
BUTTON_TOOLTIPS["refine"] = "Turn live off and run the exact settings over the layer (a normal run into a new layer)."
LIVE_TEXT = {
    "off": "live: off. Tick it to redraw the H&E under each edit of the labels (fast settings).",
    "starting": "live: generating the region once with the fast settings…",
    "on": "live: on — edits redraw the tiles under them. Settings: {what}. Refine runs the exact settings.",
    "working": "live: redrawing tile {done}/{tiles} · step {step}/{steps}",
    "updated": "live: {tiles} tile(s) redrawn in {seconds:.1f} s ({what}). Refine runs the exact settings.",
    "busy": "A run is going on in this dock: tick live when it has finished (or Cancel it).",
    "busy_refine": "A run is going on in this dock: refine when it has finished (or Cancel it).",
    "no_labels": "Choose a Labels layer first: live paint follows its edits.",
    "not_2d": "Live paint follows a 2-D labels layer; '{name}' has shape {shape}: use a 2-D layer (e.g. the slice "
              "as a new layer).",
    "removed": "'{name}' was removed: live paint stopped (the synthetic layer keeps its last pixels).",
    "reshaped": "The labels of '{name}' are now {shape}: live paint stopped; tick live to start again.",
    "normal_run": "live: off (a normal run started).",
    "refined": "live: off (refining with the exact settings).",
}
