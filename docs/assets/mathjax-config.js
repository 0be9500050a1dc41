// MathJax 3 for pymdownx.arithmatex (generic mode): formulas sit in \( \) and \[ \] inside
// elements of class "arithmatex". Everything is local: no menu extensions or fonts are fetched.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex", enableMenu: false },
  startup: {
    // Material loads pages instantly (no reload): typeset again after each page switch.
    pageReady: () => MathJax.startup.defaultPageReady().then(() => {
      if (window.document$) window.document$.subscribe(() => MathJax.typesetPromise());
    }),
  },
};
