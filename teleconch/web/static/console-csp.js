// xterm.js 6's DOM renderer puts its CSS in <style> elements (theme colours,
// cell sizes, the scrollbar) and truecolour cells in style="" attributes
// (setAttribute).  The proxy's strict CSP (style-src 'self', nothing inline)
// blocks both: the rules would not apply, and every one is a violation.
//
// The same CSS goes in through the CSSOM instead, which the CSP allows:
// - document.createElement('style') gives an inert <template> whose
//   textContent feeds a constructable stylesheet adopted by the document
//   (and dropped again when the element is removed);
// - setAttribute('style', css) on an HTML element sets element.style.cssText.
// Install it before the terminal is created.  It touches nothing else.

export function installConstructableStyles(doc) {
  if (doc.teleconchConstructableStyles) return;
  doc.teleconchConstructableStyles = true;

  const create = doc.createElement.bind(doc);
  doc.createElement = (tagName, options) =>
    String(tagName).toLowerCase() === 'style' ? styleHolder(doc, create) : create(tagName, options);

  const setAttribute = Element.prototype.setAttribute;
  Element.prototype.setAttribute = function (name, value) {
    if (String(name).toLowerCase() === 'style' && this instanceof HTMLElement) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
}

function styleHolder(doc, create) {
  const holder = create('template');
  holder.dataset.constructedStyle = '';
  const sheet = new CSSStyleSheet();
  let text = '';
  Object.defineProperty(holder, 'textContent', {
    configurable: true,
    get: () => text,
    set: (value) => {
      text = value == null ? '' : String(value);
      sheet.replaceSync(text);
    },
  });
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  const remove = holder.remove.bind(holder);
  holder.remove = () => {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
    remove();
  };
  return holder;
}
