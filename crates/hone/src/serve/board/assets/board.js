// Hone board: the page's views by address (#/, #/run/ID, #/compare/A,B, #/launch, #/arena,
// #/samples/ID). Plain DOM and inline SVG in a few modules, no libraries: the page works offline
// from the binary alone.

import { arenaView, samplesView } from "./arena.js";
import { connection, leave } from "./dom.js";
import { launchView } from "./launch.js";
import { compareView, runView, runsView } from "./runs.js";

function route() {
  leave();
  connection.textContent = "";
  const hash = location.hash || "#/";
  if (hash.startsWith("#/run/")) return runView(decodeURIComponent(hash.slice(6)));
  if (hash === "#/arena") return arenaView();
  if (hash.startsWith("#/samples/")) return samplesView(decodeURIComponent(hash.slice(10)));
  if (hash === "#/launch") return launchView(null);
  if (hash.startsWith("#/launch/")) return launchView(decodeURIComponent(hash.slice(9)));
  if (hash.startsWith("#/compare/")) return compareView(hash.slice(10).split(",").map(decodeURIComponent));
  return runsView();
}

window.addEventListener("hashchange", route);
route();
