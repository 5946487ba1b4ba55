// What the Node scripts on Dawn share (generate.mjs: the app's generation loop; stages.mjs: one
// build's functions on given inputs): WebGPU from Dawn for Node (npm `webgpu`) and tvmjs as the
// browser globals the app's code expects, a static server on 127.0.0.1 (tvmjs fetches weights
// by URL, as in the browser) and atomic writes.

import { createServer } from "node:http";
import { createReadStream, existsSync, mkdirSync, renameSync, statSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join, normalize, sep } from "node:path";
import { pathToFileURL } from "node:url";

// A static server for the given URL prefixes -> folders; resolves to the listening server.
export function serve(mounts) {
  const server = createServer((req, res) => {
    const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const m = Object.keys(mounts).find((p) => path.startsWith(p));
    const file = m && normalize(join(mounts[m], path.slice(m.length)));
    if (!m || !file.startsWith(mounts[m] + sep) || !existsSync(file) || !statSync(file).isFile()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-length": statSync(file).size });
    createReadStream(file).pipe(res);
  });
  return new Promise((ok) => server.listen(0, "127.0.0.1", () => ok(server)));
}

export function writeAtomic(path, data) {
  writeFileSync(path + ".part", data);
  renameSync(path + ".part", path);
}

// navigator.gpu from Dawn (with its toggles `flags`) and globalThis.tvmjs; with `tokenizers`,
// also @mlc-ai/web-tokenizers. Throws when Dawn is not at `dawn`.
export async function installGlobals({ dawn, tvmjs, tokenizers = null, flags = [] }) {
  const dawnIndex = join(dawn, "index.js");
  if (!existsSync(dawnIndex)) throw new Error(`Dawn for Node (npm webgpu) not found at ${dawn}`);
  const { create, globals } = await import(pathToFileURL(dawnIndex).href);
  Object.assign(globalThis, globals);
  Object.defineProperty(globalThis, "navigator", { value: { gpu: create(flags), userAgent: `node ${process.version} dawn` },
                                                    configurable: true });
  // tvmjs is a UMD script; web-tokenizers is the same in a "type": "module" package, whose
  // emscripten part looks for CommonJS require/__filename in Node: give it those.
  globalThis.tvmjs = createRequire(import.meta.url)(join(tvmjs, "index.js"));
  if (tokenizers) {
    const tokIndex = join(tokenizers, "index.js");
    Object.assign(globalThis, { require: createRequire(tokIndex), __filename: tokIndex, __dirname: tokenizers });
    await import(pathToFileURL(tokIndex).href);
  }
}

// A script's start: its arguments parsed (null, after one line on stderr, when they are bad:
// the script exits 2) and its --out folder made.
export function parsedArgs(script, parseArgs) {
  try {
    const o = parseArgs(process.argv.slice(2));
    mkdirSync(o.out, { recursive: true });
    return o;
  } catch (e) {
    console.error(`${script}: ${e.message}`);
    return null;
  }
}

// finish(code): write `result` to OUT/result.json (atomically) and return code, the exit status.
export function finisher(out, result) {
  return (code) => { writeAtomic(join(out, "result.json"), JSON.stringify(result, null, 1)); return code; };
}

// The scripts' end: `code` as the exit status. Dawn keeps the event loop alive, so leave when done.
export function exitWith(code) {
  process.exitCode = code;
  setTimeout(() => process.exit(code), 100).unref();
}
