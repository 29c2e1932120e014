// The one DOM helper the page's modules share: an element with a class and text content.
// Text goes in as textContent, never as HTML, so nothing a user or the API sends is parsed.

export function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}
