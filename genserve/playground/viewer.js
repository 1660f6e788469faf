// An interactive mesh viewer (three.js: orbit with the mouse, zoom with the wheel) for
// text-to-3d's OBJ, GLB and PLY files. The holder's data-state becomes "loaded" (with
// data-vertices) once the mesh is in the scene, or "error".

import * as THREE from "three";
import { OrbitControls } from "three/addons/controls/OrbitControls.js";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";
import { OBJLoader } from "three/addons/loaders/OBJLoader.js";
import { PLYLoader } from "three/addons/loaders/PLYLoader.js";

const SIZE = { width: 480, height: 360 };

async function load(url, format) {
  if (format === "glb") return (await new GLTFLoader().loadAsync(url)).scene;
  if (format === "obj") return new OBJLoader().loadAsync(url);
  // PLY gives a bare geometry; Shap-E writes vertex colours and no normals.
  const geometry = await new PLYLoader().loadAsync(url);
  if (!geometry.hasAttribute("normal")) geometry.computeVertexNormals();
  const material = new THREE.MeshStandardMaterial({
    vertexColors: geometry.hasAttribute("color"), side: THREE.DoubleSide });
  return new THREE.Mesh(geometry, material);
}

// Shap-E's OBJ/PLY meshes are z-up (glTF is y-up by specification).
function toYUp(object, format) {
  if (format !== "glb") object.rotation.x = -Math.PI / 2;
}

function vertexCount(object) {
  let count = 0;
  object.traverse((node) => {
    if (node.isMesh) {
      count += node.geometry.getAttribute("position")?.count ?? 0;
      // Both faces: marching-cubes winding is not guaranteed to face outwards.
      for (const m of [node.material].flat()) m.side = THREE.DoubleSide;
    }
  });
  return count;
}

export async function showMesh(holder, url, format) {
  holder.dataset.state = "loading";
  const object = await load(url, format);
  toYUp(object, format);
  const vertices = vertexCount(object);

  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setSize(SIZE.width, SIZE.height);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0xf2f2f2);
  scene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 2.5));
  const sun = new THREE.DirectionalLight(0xffffff, 1.5);
  sun.position.set(1, 2, 3);
  scene.add(sun, object);

  // Frame the mesh: centre it and put the camera at a distance that fits its bounding sphere.
  const box = new THREE.Box3().setFromObject(object);
  const sphere = box.isEmpty() ? new THREE.Sphere(new THREE.Vector3(), 1)
    : box.getBoundingSphere(new THREE.Sphere());
  const radius = Math.max(sphere.radius, 1e-3);
  const camera = new THREE.PerspectiveCamera(45, SIZE.width / SIZE.height, radius / 100,
                                             radius * 100);
  camera.position.copy(sphere.center).add(new THREE.Vector3(1, 0.8, 1.6).setLength(radius * 2.8));
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.copy(sphere.center);
  controls.update();
  // Render on demand (no animation loop): an idle viewer costs no CPU.
  const render = () => renderer.render(scene, camera);
  controls.addEventListener("change", render);
  render();

  holder.replaceChildren(renderer.domElement);
  holder.dataset.vertices = String(vertices);
  holder.dataset.format = format;
  holder.dataset.state = "loaded";
}
