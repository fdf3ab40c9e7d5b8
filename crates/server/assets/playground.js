// The playground: a form generated from /openapi.json (the server's own parameter tables,
// so it never falls behind the API), one request, the result beside the original, and the
// curl command that sends the same request.
"use strict";

const $ = (id) => document.getElementById(id);
const GROUPS = ["Subject", "Background", "Outline", "Shadow", "Output size", "Padding",
  "Margin", "Alignment", "Crop", "Format"];
// The field that carries the uploaded image, and the one that carries its URL, per endpoint.
const IMAGE_FIELDS = {
  "/v2/edit": { file: "imageFile", url: "imageUrl" },
  "/v1/segment": { file: "image_file", url: null },
  "/v1.0/removebg": { file: "image_file", url: "image_url" },
};

let api = null;
let chosenFile = null;
let resultUrl = null;

async function start() {
  const key = localStorage.getItem("cutout-api-key");
  if (key) $("api-key").value = key;
  const response = await fetch("/openapi.json");
  api = await response.json();
  $("endpoint").addEventListener("change", buildForm);
  $("api-key").addEventListener("input", () => {
    localStorage.setItem("cutout-api-key", $("api-key").value);
    showCurl();
  });
  $("image-file").addEventListener("change", () => chooseFile($("image-file").files[0]));
  $("image-url").addEventListener("input", showCurl);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) chooseFile(e.dataTransfer.files[0]);
  });
  $("slider").addEventListener("input", () => {
    $("after-clip").style.clipPath = `inset(0 0 0 ${$("slider").value}%)`;
  });
  $("request").addEventListener("submit", (e) => { e.preventDefault(); run(); });
  $("request").addEventListener("input", showCurl);
  $("request").addEventListener("change", showCurl);
  buildForm();
}

function chooseFile(file) {
  chosenFile = file || null;
  $("drop-text").textContent = file ? `${file.name} (${formatBytes(file.size)})`
    : "Drop an image here or pick one";
  if (file) $("before").src = URL.createObjectURL(file);
  showCurl();
}

// The endpoint's parameters, from the multipart schema of its POST body, in table order.
function parameters(endpoint) {
  const body = api.paths[endpoint].post.requestBody.content["multipart/form-data"];
  const images = IMAGE_FIELDS[endpoint];
  return Object.entries(body.schema.properties)
    .filter(([name]) => name !== images.file && name !== images.url)
    .sort(([, a], [, b]) => a["x-order"] - b["x-order"]);
}

function buildForm() {
  const endpoint = $("endpoint").value;
  $("image-url-label").hidden = !IMAGE_FIELDS[endpoint].url;
  const options = $("options");
  options.replaceChildren();
  const groups = new Map(GROUPS.map((g) => [g, []]));
  for (const [name, schema] of parameters(endpoint)) {
    const group = schema["x-group"] === "Image" ? "Subject" : schema["x-group"];
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group).push(field(name, schema));
  }
  for (const [group, fields] of groups) {
    if (!fields.length) continue;
    const fieldset = document.createElement("fieldset");
    const details = document.createElement("details");
    details.open = group === "Background";
    const summary = document.createElement("summary");
    summary.textContent = group;
    details.append(summary, ...fields);
    fieldset.append(details);
    options.append(fieldset);
  }
  showCurl();
}

// One control per parameter, by its schema: a choice for enums and booleans, a number with
// the documented range, a colour picker beside hex text, a file, or text.
function field(name, schema) {
  const label = document.createElement("label");
  label.className = "field";
  label.textContent = name;
  let input;
  if (schema.enum || schema.type === "boolean") {
    input = document.createElement("select");
    const values = schema.enum || ["true", "false"];
    input.append(new Option("(default)", ""), ...values.map((v) => new Option(v, v)));
  } else if (schema.type === "number" || schema.type === "integer") {
    input = document.createElement("input");
    input.type = "number";
    input.step = schema.type === "integer" ? "1" : "any";
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
  } else if (schema.format === "binary") {
    input = document.createElement("input");
    input.type = "file";
    input.accept = "image/png,image/jpeg,image/webp";
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.spellcheck = false;
    if (schema.example) input.placeholder = schema.example;
  }
  input.name = name;
  input.dataset.param = name;
  label.append(input);
  if (schema.example === "FFFFFF") {
    const picker = document.createElement("input");
    picker.type = "color";
    picker.setAttribute("aria-label", `${name} picker`);
    picker.addEventListener("input", () => {
      input.value = picker.value.slice(1).toUpperCase();
      showCurl();
    });
    // Typed hex (6 digits) moves the picker too; names and alpha stay text only.
    input.addEventListener("input", () => {
      const hex = input.value.trim().replace(/^#/, "");
      if (/^[0-9a-fA-F]{6}$/.test(hex)) picker.value = `#${hex.toLowerCase()}`;
    });
    label.append(picker);
  }
  const help = document.createElement("small");
  help.textContent = schema.description || "";
  label.append(help);
  return label;
}

// The request as the form stands: [name, value] for text, [name, File] for files.
function chosenParameters() {
  const endpoint = $("endpoint").value;
  const images = IMAGE_FIELDS[endpoint];
  const chosen = [];
  if (chosenFile) chosen.push([images.file, chosenFile]);
  else if (images.url && $("image-url").value.trim()) chosen.push([images.url, $("image-url").value.trim()]);
  for (const input of $("options").querySelectorAll("[data-param]")) {
    if (input.type === "file") {
      if (input.files.length) chosen.push([input.name, input.files[0]]);
    } else if (input.value.trim() !== "") {
      chosen.push([input.name, input.value.trim()]);
    }
  }
  return chosen;
}

function shellQuote(text) {
  return `'${String(text).replace(/'/g, "'\\''")}'`;
}

function showCurl() {
  if (!api) return;
  const endpoint = $("endpoint").value;
  const lines = [`curl -X POST ${shellQuote(location.origin + endpoint)}`];
  const key = $("api-key").value.trim();
  if (key) lines.push(`-H ${shellQuote(`x-api-key: ${key}`)}`);
  for (const [name, value] of chosenParameters()) {
    lines.push(value instanceof File ? `-F ${shellQuote(`${name}=@${value.name}`)}`
      : `-F ${shellQuote(`${name}=${value}`)}`);
  }
  lines.push(`-o ${shellQuote(`result.${extension()}`)}`);
  $("curl").textContent = lines.join(" \\\n  ");
}

function extension() {
  const format = chosenParameters().find(([n]) => n === "export.format" || n === "format");
  const value = format ? format[1] : "png";
  return { jpeg: "jpg", jpg: "jpg", webp: "webp", zip: "zip" }[value] || "png";
}

// The message of an error reply, in whichever dialect's shape it came.
function errorMessage(body) {
  if (body.errors && body.errors.length) {
    return body.errors.map((e) => `${e.title}: ${e.detail || ""}`).join("; ");
  }
  if (body.detail) return body.detail;
  if (body.error) return body.error.message || body.error.detail || JSON.stringify(body.error);
  return JSON.stringify(body);
}

async function run() {
  const endpoint = $("endpoint").value;
  // The server refuses a body over its limit from its length (413); a browser still sending
  // it may see the connection close instead of the reply, so a file that cannot fit is
  // refused here, in the server's words, without sending it.
  const limit = api.info["x-cutout-limits"].maxUploadBytes;
  const files = chosenParameters().filter(([, value]) => value instanceof File);
  if (files.reduce((sum, [, file]) => sum + file.size, 0) > limit) {
    $("result").hidden = false;
    $("compare").hidden = true;
    showError(`413: the request body is larger than ${limit} bytes (not sent)`);
    return;
  }
  const form = new FormData();
  for (const [name, value] of chosenParameters()) form.append(name, value);
  const headers = {};
  const key = $("api-key").value.trim();
  if (key) headers["x-api-key"] = key;
  $("run").disabled = true;
  $("result").hidden = false;
  $("error").hidden = true;
  $("compare").hidden = true;
  $("download").hidden = true;
  $("headers").replaceChildren();
  try {
    const response = await fetch(endpoint, { method: "POST", headers, body: form });
    const type = response.headers.get("content-type") || "";
    if (!response.ok) {
      const body = type.includes("json") ? await response.json() : { detail: await response.text() };
      showError(`${response.status}: ${errorMessage(body)}`);
      return;
    }
    const blob = await response.blob();
    if (resultUrl) URL.revokeObjectURL(resultUrl);
    resultUrl = URL.createObjectURL(blob);
    const after = $("after");
    await new Promise((resolve) => {
      after.onload = resolve;
      after.onerror = resolve;
      after.src = resultUrl;
    });
    if (!chosenFile) $("before").src = resultUrl;
    $("compare").hidden = false;
    const download = $("download");
    download.href = resultUrl;
    download.download = `result.${extension()}`;
    download.hidden = false;
    showHeaders(response, blob);
  } catch (error) {
    showError(`the request failed: ${error.message}`);
  } finally {
    $("run").disabled = false;
  }
}

function showError(message) {
  $("result").hidden = false;
  $("error").textContent = message;
  $("error").hidden = false;
}

function showHeaders(response, blob) {
  const rows = [
    ["size", `${response.headers.get("x-image-width")} × ${response.headers.get("x-image-height")} px, ${formatBytes(blob.size)} ${blob.type}`],
    ["uncertainty score", response.headers.get("x-uncertainty-score")],
    ["credits charged", response.headers.get("x-credits-charged")],
    ["processing time", `${response.headers.get("x-processing-time-ms")} ms`],
    ["request id", response.headers.get("x-request-id")],
  ];
  const list = $("headers");
  for (const [name, value] of rows) {
    if (value === null) continue;
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.header = name;
    list.append(dt, dd);
  }
}

function formatBytes(bytes) {
  return bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(2)} MB`;
}

start().catch((error) => showError(`could not load the API description: ${error.message}`));
