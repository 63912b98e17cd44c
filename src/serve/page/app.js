// The page of `msa serve`. It talks to the server only through the JSON API in the README.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_RGBA = [255, 60, 40, 120];

const state = {
  image: null,   // {id, width, height, slices}
  slice: 0,
  // prompts[slice][label] = {points: [[x, y, l]], box: [x0, y0, x1, y1] | null}
  prompts: {},
  history: [],   // [slice, label, previous prompt set] for undo
  masks: {},     // slice -> PNG base64 of the last mask
  busy: false,
  pending: false,
  hasLabels: false,
};

function status(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(`${response.status}: ${message}`);
  }
  return response;
}

async function loadModels() {
  const { models, adapters } = await (await api("api/models")).json();
  const modelSelect = $("model");
  for (const m of models) {
    const o = new Option(`${m.name} (${m.preset}, ${m.image_size} px)`, m.name);
    o.selected = m.default;
    modelSelect.add(o);
  }
  const adapterSelect = $("adapters");
  for (const a of adapters) {
    const depth = a.depth_chunk ? `, depth ${a.depth_chunk}` : "";
    adapterSelect.add(new Option(`${a.name} (on ${a.base}${depth})`, a.name));
  }
  adapterSelect.onchange = () => {
    const a = adapters.find((x) => x.name === adapterSelect.value);
    if (a) modelSelect.value = a.base;
    predict();
  };
  modelSelect.onchange = () => {
    const a = adapters.find((x) => x.name === adapterSelect.value);
    if (a && a.base !== modelSelect.value) adapterSelect.value = "";
    predict();
  };
}

function modelChoice() {
  return { model: $("model").value || null, adapters: $("adapters").value || null };
}

async function openFile(file) {
  if (!file) return;
  status(`Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB)…`);
  try {
    const response = await api("api/images", { method: "POST", body: file });
    state.image = await response.json();
  } catch (e) {
    status(`Cannot open ${file.name}: ${e.message}`, true);
    return;
  }
  state.image.name = file.name.replace(/\.(nii\.gz|nii|nrrd|png|jpe?g|tiff?|bmp|dcm|zip)$/i, "");
  $("save-seg").hidden = !state.image.dicom;
  Object.assign(state, { slice: 0, prompts: {}, history: [], masks: {}, hasLabels: false });
  const { width, height, slices } = state.image;
  for (const c of ["image", "labels", "mask", "prompts"]) {
    $(c).width = width;
    $(c).height = height;
  }
  document.body.classList.toggle("volume", slices > 1);
  $("slice").max = slices - 1;
  $("slice").value = Math.floor(slices / 2);
  $("drop").style.display = "none";
  $("stage").style.display = "block";
  fitStage();
  await showSlice(Number($("slice").value));
  status(`${file.name}: ${width} x ${height}${slices > 1 ? ` x ${slices} slices` : ""}. Click to segment.`);
}

function fitStage() {
  if (!state.image) return;
  const main = $("viewer");
  const scale = Math.min((main.clientWidth - 20) / state.image.width,
                         (main.clientHeight - 20) / state.image.height, 16);
  $("stage").style.width = `${state.image.width * scale}px`;
  $("stage").style.height = `${state.image.height * scale}px`;
}

async function showSlice(k) {
  state.slice = k;
  $("slice-label").textContent = `${k} / ${state.image.slices - 1}`;
  const blob = await (await api(`api/images/${state.image.id}/slices/${k}`)).blob();
  const bitmap = await createImageBitmap(blob);
  $("image").getContext("2d").drawImage(bitmap, 0, 0);
  await drawLabels();
  await drawMask(state.masks[k]);
  drawPrompts();
}

function currentSet() {
  const label = Number($("class").value) || 1;
  const bySlice = (state.prompts[state.slice] ||= {});
  return (bySlice[label] ||= { points: [], box: null });
}

function remember() {
  const label = Number($("class").value) || 1;
  state.history.push([state.slice, label, JSON.parse(JSON.stringify(currentSet()))]);
}

function addPoint(x, y, positive) {
  remember();
  currentSet().points.push([Math.round(x), Math.round(y), positive ? 1 : 0]);
  promptsChanged();
}

function setBox(x0, y0, x1, y1) {
  remember();
  currentSet().box = [Math.round(Math.min(x0, x1)), Math.round(Math.min(y0, y1)),
                      Math.round(Math.max(x0, x1)), Math.round(Math.max(y0, y1))];
  promptsChanged();
}

function undo() {
  const last = state.history.pop();
  if (!last) return;
  const [slice, label, previous] = last;
  state.prompts[slice][label] = previous;
  if (slice !== state.slice) {
    $("slice").value = slice;
    showSlice(slice);
  }
  promptsChanged();
}

function clearPrompts() {
  const label = Number($("class").value) || 1;
  remember();
  currentSet().points = [];
  currentSet().box = null;
  delete state.prompts[state.slice][label];
  promptsChanged();
}

function promptsChanged() {
  drawPrompts();
  const any = Object.values(state.prompts).some((bySlice) =>
    Object.values(bySlice).some((s) => s.points.length || s.box));
  $("undo").disabled = state.history.length === 0;
  $("clear").disabled = !any;
  $("save-prompts").disabled = !any;
  $("propagate").disabled = !any;
  predict();
}

// One request at a time; prompts added meanwhile are sent together afterwards.
async function predict() {
  if (!state.image) return;
  if (state.busy) { state.pending = true; return; }
  const set = currentSet();
  if (!set.points.length && !set.box) {
    delete state.masks[state.slice];
    await drawMask(null);
    $("save-mask").disabled = true;
    return;
  }
  state.busy = true;
  const slice = state.slice;
  try {
    const body = JSON.stringify({ points: set.points, box: set.box, slice, ...modelChoice() });
    const started = performance.now();
    const response = await api(`api/images/${state.image.id}/predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    });
    const out = await response.json();
    state.masks[slice] = out.mask_png_base64;
    if (slice === state.slice) await drawMask(out.mask_png_base64);
    $("save-mask").disabled = false;
    const total = performance.now() - started;
    status(`IoU ${out.iou.toFixed(3)}; server ${out.ms.toFixed(0)} ms${out.encoded ? " (encoded the image)" : ""}, ` +
           `round trip ${total.toFixed(0)} ms`);
  } catch (e) {
    status(`Prediction failed: ${e.message}`, true);
  } finally {
    state.busy = false;
    if (state.pending) { state.pending = false; predict(); }
  }
}

async function pngPixels(base64) {
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = c.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

async function drawMask(base64) {
  const ctx = $("mask").getContext("2d");
  ctx.clearRect(0, 0, $("mask").width, $("mask").height);
  if (!base64) return;
  const src = await pngPixels(base64);
  const out = ctx.createImageData(src.width, src.height);
  for (let i = 0; i < src.data.length; i += 4) {
    if (src.data[i] > 127) out.data.set(MASK_RGBA, i);
  }
  ctx.putImageData(out, 0, 0);
}

async function drawLabels() {
  const ctx = $("labels").getContext("2d");
  ctx.clearRect(0, 0, $("labels").width, $("labels").height);
  if (!state.hasLabels) return;
  const blob = await (await api(`api/images/${state.image.id}/labels/${state.slice}`)).blob();
  ctx.globalAlpha = 0.45;
  ctx.drawImage(await createImageBitmap(blob), 0, 0);
  ctx.globalAlpha = 1;
}

function drawPrompts(dragBox = null) {
  const canvas = $("prompts");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const r = Math.max(3, canvas.width / 150);
  ctx.lineWidth = Math.max(1.5, canvas.width / 400);
  const bySlice = state.prompts[state.slice] || {};
  for (const set of Object.values(bySlice)) {
    if (set.box) {
      ctx.strokeStyle = "#ffd400";
      ctx.strokeRect(set.box[0], set.box[1], set.box[2] - set.box[0], set.box[3] - set.box[1]);
    }
    for (const [x, y, l] of set.points) {
      ctx.fillStyle = l ? "#27e05a" : "#ff3b3b";
      ctx.beginPath();
      ctx.arc(x, y, r, 0, 2 * Math.PI);
      ctx.fill();
      ctx.strokeStyle = "#000";
      ctx.stroke();
    }
  }
  if (dragBox) {
    ctx.setLineDash([6, 4]);
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(dragBox[0], dragBox[1], dragBox[2] - dragBox[0], dragBox[3] - dragBox[1]);
    ctx.setLineDash([]);
  }
}

// Canvas coordinates in original image pixels.
function imageXY(event) {
  const canvas = $("prompts");
  const rect = canvas.getBoundingClientRect();
  return [
    Math.min(canvas.width, Math.max(0, (event.clientX - rect.left) * canvas.width / rect.width)),
    Math.min(canvas.height, Math.max(0, (event.clientY - rect.top) * canvas.height / rect.height)),
  ];
}

function wirePointer() {
  const canvas = $("prompts");
  let down = null;
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("mousedown", (e) => { down = { xy: imageXY(e), button: e.button, shift: e.shiftKey }; });
  canvas.addEventListener("mousemove", (e) => {
    if (!down || down.button !== 0) return;
    const [x, y] = imageXY(e);
    drawPrompts([Math.min(down.xy[0], x), Math.min(down.xy[1], y), Math.max(down.xy[0], x), Math.max(down.xy[1], y)]);
  });
  canvas.addEventListener("mouseup", (e) => {
    if (!down) return;
    const [x, y] = imageXY(e);
    const [x0, y0] = down.xy;
    const dragPx = Math.hypot((x - x0), (y - y0)) * canvas.getBoundingClientRect().width / canvas.width;
    if (down.button === 0 && dragPx > 5) setBox(x0, y0, x, y);
    else addPoint(x0, y0, down.button === 0 && !down.shift);
    down = null;
  });
}

// `msa predict --prompts` for an image; `msa predict-volume --prompts` for a volume.
function promptFile() {
  if (state.image.slices === 1) {
    const set = (state.prompts[0] || {})[1] || { points: [], box: null };
    return { points: set.points, box: set.box };
  }
  const classes = {};
  for (const [slice, bySlice] of Object.entries(state.prompts)) {
    for (const [label, set] of Object.entries(bySlice)) {
      const c = (classes[label] ||= { points: {}, boxes: {}, interpolate_boxes: $("interpolate").checked });
      if (set.points.length) c.points[slice] = set.points;
      if (set.box) c.boxes[slice] = set.box;
    }
  }
  return { classes };
}

function download(name, blob) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

async function propagate() {
  status("Propagating through the prompted slices…");
  $("propagate").disabled = true;
  try {
    const body = JSON.stringify({ prompts: promptFile(), ...modelChoice() });
    const out = await (await api(`api/images/${state.image.id}/propagate`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body,
    })).json();
    state.hasLabels = true;
    $("save-nifti").disabled = false;
    $("save-seg").disabled = !state.image.dicom;
    await drawLabels();
    const voxels = Object.entries(out.voxels).map(([l, n]) => `label ${l}: ${n}`).join(", ");
    status(`Segmented ${out.slices.length} slices in ${(out.ms / 1000).toFixed(1)} s; ${voxels || "no voxels"}`);
  } catch (e) {
    status(`Propagation failed: ${e.message}`, true);
  } finally {
    $("propagate").disabled = false;
  }
}

function wireControls() {
  $("file").onchange = (e) => openFile(e.target.files[0]);
  const main = $("viewer");
  main.addEventListener("dragover", (e) => { e.preventDefault(); main.classList.add("dragging"); });
  main.addEventListener("dragleave", () => main.classList.remove("dragging"));
  main.addEventListener("drop", (e) => {
    e.preventDefault();
    main.classList.remove("dragging");
    openFile(e.dataTransfer.files[0]);
  });
  $("undo").onclick = undo;
  $("clear").onclick = clearPrompts;
  $("slice").oninput = (e) => showSlice(Number(e.target.value)).catch((err) => status(err.message, true));
  $("class").onchange = () => { drawPrompts(); predict(); };
  $("propagate").onclick = propagate;
  $("save-seg").onclick = async () => {
    const blob = await (await api(`api/images/${state.image.id}/segmentation.dcm`)).blob();
    download(`${state.image.name}_seg.dcm`, blob);
  };
  $("save-nifti").onclick = async () => {
    const blob = await (await api(`api/images/${state.image.id}/segmentation.nii.gz`)).blob();
    download(`${state.image.name}_seg.nii.gz`, blob);
  };
  $("save-mask").onclick = () => {
    const b64 = state.masks[state.slice];
    if (!b64) return;
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const suffix = state.image.slices > 1 ? `_slice${state.slice}` : "";
    download(`${state.image.name}${suffix}_mask.png`, new Blob([bytes], { type: "image/png" }));
  };
  $("save-prompts").onclick = () => {
    const json = JSON.stringify(promptFile(), null, 1);
    download(`${state.image.name}_prompts.json`, new Blob([json], { type: "application/json" }));
  };
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  });
  window.addEventListener("resize", fitStage);
}

wireControls();
wirePointer();
loadModels().catch((e) => status(`Cannot list models: ${e.message}`, true));
